# DepthEstimator: frozen SAIL backbone (as in linear_sail.py) + SAILLinearDepthHead, the linear depth probe of
# DINOv2 / DINOv3 (BatchNorm + 1x1 conv, 256 depth bins, expected depth). Dataset-agnostic; values cited in
# docs/depth.md.
_base_ = ['./linear_sail.py']
data_preprocessor = dict(seg_pad_val=0)  # depth is padded with 0 = "no measurement" (255 would read as 255 m)
model = dict(
    type='DepthEstimator',
    data_preprocessor=data_preprocessor,
    backbone=dict(norm=True),    # final RMSNorm on every selected layer (DINOv3: use_backbone_norm)
    decode_head=dict(
        _delete_=True,
        type='SAILLinearDepthHead',
        in_channels=[4096],          # width of each selected map
        in_index=[0],                # positions in the backbone's output tuple (default (0,))
        n_bins=256,                  # depth bins; 1 = plain regression (default 256)
        min_depth=0.001,             # metres (default 0.001)
        max_depth=10.0,              # metres (default 10.0, NYUv2)
        bin_spacing='linear',        # 'linear' or 'log' (default 'linear')
        normalisation='linear',      # 'linear' (AdaBins), 'softmax' or 'sigmoid' (default 'linear')
        norm_cfg=_base_.norm_cfg,    # SyncBN; default dict(type='BN'); None for no BatchNorm
        align_corners=False,
        loss_decode=dict(type='SiLogLoss')))  # mmseg's scale-invariant log loss
