# DINOv3's NYUv2 depth schedule (dinov3/eval/depth/configs/config-nyu.yaml): 38,400 iterations, AdamW
# lr 3e-4, betas (0.9, 0.99), weight decay 1e-4, gradient clipping at 35, one-cycle learning rate with
# 12,800 warm-up iterations and final_div_factor 1000 (mmengine's OneCycleLR; DINOv3 uses its own
# WarmupOneCycleLR, whose momentum cycling 0.85-0.95 is not reproduced here). Hooks as schedule_40k, and the
# checkpoint with the lowest validation rmse kept.
_base_ = ['./schedule_40k.py']
optimizer = dict(type='AdamW', lr=3e-4, betas=(0.9, 0.99), weight_decay=1e-4)
optim_wrapper = dict(optimizer=optimizer, clip_grad=dict(_delete_=True, max_norm=35, norm_type=2))
param_scheduler = [
    dict(type='OneCycleLR', eta_max=3e-4, total_steps=38400, pct_start=12800 / 38400, final_div_factor=1000.0,
         by_epoch=False, begin=0, end=38400),
]
train_cfg = dict(max_iters=38400, val_interval=3200)
default_hooks = dict(checkpoint=dict(interval=3200, save_best='rmse', rule='less'))
