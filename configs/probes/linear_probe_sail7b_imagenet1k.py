# Linear probe of SAIL-7B's last-layer mean patch token on ImageNet-1K (features extracted beforehand;
# see _base_/datasets/imagenet1k_features.py). SAIL-7B has 32 blocks and width 4096.
#   python tools/train.py configs/probes/linear_probe_sail7b_imagenet1k.py
# Choose the learning rate with `sail-vision probe --train features/in1k-train --val features/in1k-val`
# (one-pass grid, honest held-out selection) and set optim_wrapper.optimizer.lr to the chosen value.
_base_ = ['./_base_/default_runtime.py', './_base_/schedule_sgd_cosine.py',
          './_base_/datasets/imagenet1k_features.py']
model = dict(type='LinearProbeClassifier', num_classes=1000, features='layer-32_mean', data_root='features',
             stats_from='in1k-train', standardize=True)
optim_wrapper = dict(optimizer=dict(lr=0.01, weight_decay=0.0))
default_hooks = dict(logger=dict(interval=100))
work_dir = './work_dirs/linear_probe_sail7b_imagenet1k'
