# EncoderDecoder: frozen SAIL backbone + SAILLinearHead (DINOv2's "linear" head on the last layer).
# Dataset-agnostic: the config that uses this file sets decode_head.num_classes from its dataset file.
norm_cfg = dict(type='SyncBN', requires_grad=True)  # multi-GPU; reverted to BN when not distributed
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],  # ImageNet, as SAIL was trained
    bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SAILBackbone',
        checkpoint='checkpoints/SAIL-7B',  # local SAIL checkpoint folder (required)
        out_indices=(-1,),                 # hidden-state indices; -1 = last layer (default (-1,))
        norm=False,                        # final RMSNorm on intermediate layers too (default False)
        frozen=True,                       # default True
        dtype='auto',                      # SAIL's compute dtype (bf16 on Ampere+, fp16 before, fp32 on CPU)
        attn_implementation='sdpa',        # 'sdpa' or 'eager' (default 'sdpa')
        device='auto'),                    # where SAIL is read to: each rank's current GPU, else CPU (default 'auto')
    decode_head=dict(
        type='SAILLinearHead',
        in_channels=[4096],   # width of each selected map
        in_index=[0],         # positions in the backbone's output tuple (default (0,))
        norm_cfg=norm_cfg,    # default dict(type='BN')
        dropout_ratio=0.0,    # default 0.0
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
