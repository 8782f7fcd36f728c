# NYUv2 depth in mmseg's NYU layout (data/nyu/{images,annotations}/{train,test}, depth as 16-bit PNG in mm),
# read by mmseg's own NYUDataset / LoadDepthAnnotation and scored by DepthMetric. Images are 480x640
# (15x20 SAIL patches) and evaluated whole; training takes random 416x544 crops (multiples of SAIL's
# 32-pixel patch; DINOv3's NYU random_crop). Photometric and rotation augmentations of the reference
# protocols are not applied (docs/depth.md). Depth maps are loaded after any resize, so ground truth
# stays at its own resolution; predictions are resized back to it.
dataset_type = 'NYUDataset'
data_root = 'data/nyu'
crop_size = (416, 544)
meta_keys = ('img_path', 'depth_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
             'flip_direction', 'category_id')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),  # millimetres -> metres
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadDepthAnnotation', depth_rescale_factor=1e-3),
    dict(type='PackSegInputs', meta_keys=meta_keys),
]
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='images/train', depth_map_path='annotations/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, test_mode=True,
                 data_prefix=dict(img_path='images/test', depth_map_path='annotations/test'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
# Depths in (0.001, 10) m inside the Eigen crop (rows 45:471, cols 41:601 of a 480x640 map).
val_evaluator = dict(type='DepthMetric', min_depth_eval=0.001, max_depth_eval=10.0, crop_type='nyu_crop')
test_evaluator = val_evaluator
