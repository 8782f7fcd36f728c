# Runtime shared by every segmentation config (mmengine Runner settings).
# custom_imports registers SAILBackbone, SAILLinearHead, SyntheticColourDataset and
# WeightsOnlyCheckpointHook, and makes local checkpoints load with torch.load(weights_only=True) only.
custom_imports = dict(imports=['sail_vision.mmseg'], allow_failed_imports=False)
# Checkpoints hold only tensors and plain values (no pickled objects), so they load with
# torch.load(weights_only=True) anywhere; resuming restores the logs exactly.
custom_hooks = [dict(type='WeightsOnlyCheckpointHook')]
default_scope = 'mmseg'
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None   # a checkpoint to start from (weights only)
resume = False     # True: continue from load_from, or from the latest checkpoint in work_dir
# The frozen SAIL backbone has no trainable parameters and is kept out of DDP's view, so
# DDP needs no unused-parameter search.
find_unused_parameters = False
# Test-time augmentation wrapper used by `tools/test.py --tta` (with the dataset's tta_pipeline).
tta_model = dict(type='SegTTAModel')
