# Demo / test config: the random tiny SAIL checkpoint (4 blocks, width 256, patch 8) + linear head on the
# synthetic data (64x64 images, 4 colour classes). CPU, a few minutes at most:
#   python -m sail_vision.mmseg.synthetic
#   python tools/train.py configs/sail/linear_sail-tiny_1xb4-300_synthetic-64x64.py
_base_ = ['../_base_/models/linear_sail.py', '../_base_/datasets/synthetic_64x64.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_300.py']
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(checkpoint='data/sail_seg_demo/checkpoint', dtype='float32'),
    decode_head=dict(in_channels=[256], norm_cfg=norm_cfg, num_classes=_base_.num_classes),
    test_cfg=dict(mode='whole'))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
