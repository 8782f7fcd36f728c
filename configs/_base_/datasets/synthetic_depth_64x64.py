# The synthetic depth data written by `python -m sail_vision.mmseg.synthetic --task depth` (64x64 images
# in mmseg's NYU layout, depth set by each cell's colour, 3 % holes). mmseg's NYUDataset reads it; the
# NYU pipeline at the demo's size, batch 4, no worker processes, no Eigen crop (it assumes 480x640).
_base_ = ['./nyu_480x640.py']
data_root = 'data/sail_depth_demo'
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs', meta_keys=_base_.meta_keys),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(type='DepthMetric', min_depth_eval=0.001, max_depth_eval=10.0, crop_type=None)
test_evaluator = val_evaluator
