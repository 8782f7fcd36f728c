# SAIL-7B (frozen, dtype auto: bfloat16 on Ampere+ GPUs) + linear depth head on the last layer; NYUv2
# (480x640 images, random 416x544 training crops), 38,400 iters, 8 GPUs x 2 images: DINOv3's NYUv2 linear
# protocol (docs/depth.md).
#   bash tools/dist_train.sh configs/sail/linear_sail-7b_8xb2-38400_nyu-416x544.py 8
# Put the SAIL-7B checkpoint folder at checkpoints/SAIL-7B or pass
#   --cfg-options model.backbone.checkpoint=/path/to/SAIL-7B
# No fixed padding size: crops (416x544) and whole test images (480x640) are already multiples of 32, and
# padding would add tokens SAIL's bidirectional attention sees.
_base_ = ['../_base_/models/linear_depth_sail.py', '../_base_/datasets/nyu_480x640.py',
          '../_base_/default_runtime.py', '../_base_/schedules/schedule_38400_depth.py']
