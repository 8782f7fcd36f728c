# Runtime shared by the probe configs: mmseg scope, sail-vision's registrations, logging, checkpoints.
default_scope = 'mmseg'
custom_imports = dict(imports=['sail_vision.mmseg'], allow_failed_imports=False)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='probe/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
# Checkpoints hold only tensors and plain values, so they load with torch.load(weights_only=True);
# the hook is registered by sail_vision.mmseg, which the registration module imports.
custom_hooks = [dict(type='WeightsOnlyCheckpointHook')]
