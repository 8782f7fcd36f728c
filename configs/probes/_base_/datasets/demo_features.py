# Features written by `sail-vision demo` (./sail-vision-demo/features by default): six unlabelled images,
# labelled here from their file names (china* / flower*). Change the folder with, e.g.,
#   --cfg-options train_dataloader.dataset.data_root=/tmp/demo val_dataloader.dataset.data_root=/tmp/demo \
#                 test_dataloader.dataset.data_root=/tmp/demo model.data_root=/tmp/demo
data_root = 'sail-vision-demo'
feature = 'layer-4_mean'
label_pattern = '^(china|flower)'
num_classes = 2
_dataset = dict(type='ExtractedFeatureDataset', data_root=data_root, feature_dir='features', features=feature,
                label_pattern=label_pattern)
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        sampler=dict(type='DefaultSampler', shuffle=True), dataset=_dataset)
val_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                      sampler=dict(type='DefaultSampler', shuffle=False), dataset=_dataset)
test_dataloader = val_dataloader
val_evaluator = dict(type='ProbeAccuracy', topk=(1, 5))
test_evaluator = val_evaluator
