# The synthetic data written by `python -m sail_vision.mmseg.synthetic` (see sail_vision/mmseg/synthetic.py):
# 64x64 images in ADE20K's folder layout, 4 colour classes named red, green, blue, yellow (label 0 = other,
# ignored: the dataset sets reduce_zero_label). ADE20K's loaders and evaluator at the demo's size, batch 4,
# no worker processes.
_base_ = ['./ade20k_512x512.py']
dataset_type = 'SyntheticColourDataset'
data_root = 'data/sail_seg_demo'
num_classes = 4     # configs pass it to their heads: decode_head=dict(num_classes=_base_.num_classes)
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
