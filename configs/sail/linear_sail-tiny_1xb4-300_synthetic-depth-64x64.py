# Demo / test config: the random tiny SAIL checkpoint (4 blocks, width 256, patch 8) + linear depth head on
# the synthetic depth data (64x64 images, depth set by colour). CPU, a minute at most:
#   python -m sail_vision.mmseg.synthetic --task depth
#   python tools/train.py configs/sail/linear_sail-tiny_1xb4-300_synthetic-depth-64x64.py
_base_ = ['../_base_/models/linear_depth_sail.py', '../_base_/datasets/synthetic_depth_64x64.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_300.py']
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=(64, 64))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(checkpoint='data/sail_depth_demo/checkpoint', dtype='float32'),
    decode_head=dict(in_channels=[256], norm_cfg=norm_cfg))
default_hooks = dict(checkpoint=dict(save_best='rmse', rule='less'))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
