# SAIL-7B (frozen, dtype auto: bfloat16 on Ampere+ GPUs) + linear head on the last layer; ADE20K 512x512,
# 40k iters, 8 GPUs x 2 images.
#   bash tools/dist_train.sh configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py 8
# Put the SAIL-7B checkpoint folder at checkpoints/SAIL-7B or pass
#   --cfg-options model.backbone.checkpoint=/path/to/SAIL-7B
_base_ = ['../_base_/models/linear_sail.py', '../_base_/datasets/ade20k_512x512.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_40k.py']
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(num_classes=_base_.num_classes),
    # Sliding-window inference; crop and stride are multiples of SAIL's 32-pixel patch.
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(352, 352)))
