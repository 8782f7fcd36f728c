# ImageNet-1K features from `sail-vision extract` (train: class folders; val: --labels-file), e.g.
#   sail-vision extract --checkpoint SAIL-7B --images imagenet --split train --layers -1 --pool mean \
#       --resolution 224 --out features/in1k-train   (and --split val --labels-file val.txt --out features/in1k-val)
data_root = 'features'
feature = 'layer-32_mean'
num_classes = 1000
train_dataloader = dict(
    batch_size=1024, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='ExtractedFeatureDataset', data_root=data_root, feature_dir='in1k-train', features=feature))
val_dataloader = dict(
    batch_size=1024, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ExtractedFeatureDataset', data_root=data_root, feature_dir='in1k-val', features=feature))
test_dataloader = val_dataloader
val_evaluator = dict(type='ProbeAccuracy', topk=(1, 5))
test_evaluator = val_evaluator
