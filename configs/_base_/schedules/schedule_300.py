# A 300-iteration schedule for the tiny demo / test configs (seconds on a CPU): schedule_40k with a
# larger learning rate, no warm-up, more frequent logs and checkpoints, and every test image drawn
# by `tools/test.py --show-dir` (the demo has 16).
_base_ = ['./schedule_40k.py']
optim_wrapper = dict(optimizer=dict(lr=1e-2))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=0, end=300)]
train_cfg = dict(max_iters=300, val_interval=300)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=100, max_keep_ckpts=2),
                     visualization=dict(interval=1))
