# The tiny analogue of the UperNet config (layers 1..4 -> MultiLevelNeck -> UPerHead), with sliding-window
# inference (32x32 crops, stride 16), for tests.
_base_ = ['../_base_/models/upernet_mln_sail.py', '../_base_/datasets/synthetic_64x64.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_300.py']
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(checkpoint='data/sail_seg_demo/checkpoint', dtype='float32', out_indices=(1, 2, 3, -1)),
    neck=dict(in_channels=[256] * 4, out_channels=64),
    decode_head=dict(in_channels=[64] * 4, channels=64, norm_cfg=norm_cfg, num_classes=_base_.num_classes),
    test_cfg=dict(mode='slide', crop_size=(32, 32), stride=(16, 16)))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
