# The linear probe on `sail-vision demo` features (a few seconds on CPU):
#   sail-vision demo && python tools/train.py configs/probes/linear_probe_demo.py
_base_ = ['./_base_/default_runtime.py', './_base_/schedule_sgd_cosine.py', './_base_/datasets/demo_features.py']
model = dict(type='LinearProbeClassifier', num_classes=2, features='layer-4_mean', data_root='sail-vision-demo',
             stats_from='features', standardize=True)
max_epochs = 5
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, begin=0, end=max_epochs)]
default_hooks = dict(logger=dict(interval=1))
work_dir = './work_dirs/linear_probe_demo'
