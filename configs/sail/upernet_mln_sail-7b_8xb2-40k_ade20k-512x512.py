# SAIL-7B (frozen, bfloat16, layers 8/16/24/last) -> MultiLevelNeck pyramid -> UPerHead; ADE20K 512x512.
#   bash tools/dist_train.sh configs/sail/upernet_mln_sail-7b_8xb2-40k_ade20k-512x512.py 8
_base_ = ['../_base_/models/upernet_mln_sail.py', '../_base_/datasets/ade20k_512x512.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_40k.py']
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
optim_wrapper = dict(optimizer=dict(lr=1e-4))
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=_base_.num_classes),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(352, 352)))
