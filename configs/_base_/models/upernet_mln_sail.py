# EncoderDecoder: frozen SAIL backbone (4 layers) -> MultiLevelNeck (a 4-scale pyramid built from the
# single-scale maps: x4, x2, x1, x0.5) -> mmseg's UPerHead. Data preprocessing as in linear_sail.py.
# Dataset-agnostic: the config that uses this file sets decode_head.num_classes from its dataset file.
_base_ = ['./linear_sail.py']
norm_cfg = dict(type='SyncBN', requires_grad=True)  # multi-GPU; reverted to BN when not distributed
model = dict(
    backbone=dict(
        out_indices=(8, 16, 24, -1),   # four depths, shallow to deep
        norm=True),                    # the final RMSNorm on the intermediate layers too
    neck=dict(
        type='MultiLevelNeck',
        in_channels=[4096, 4096, 4096, 4096],
        out_channels=1024,
        scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        _delete_=True,
        type='UPerHead',
        in_channels=[1024, 1024, 1024, 1024],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
