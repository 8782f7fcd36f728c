# DINOv2's "linear4 + ms" protocol: linear head over four layers (8, 16, 24, last), trained like the
# linear config, evaluated with multi-scale (x0.5..x1.75) + flip test-time augmentation:
#   python tools/test.py configs/sail/linear4-ms_sail-7b_8xb2-40k_ade20k-512x512.py CKPT --tta
_base_ = ['./linear_sail-7b_8xb2-40k_ade20k-512x512.py']
model = dict(
    backbone=dict(out_indices=(8, 16, 24, -1), norm=True),
    decode_head=dict(in_channels=[4096] * 4, in_index=[0, 1, 2, 3]))
