# The tiny analogue of the linear4 + multi-scale TTA config (layers 1..4), for tests:
#   python tools/test.py configs/sail/linear4-ms_sail-tiny_1xb4-300_synthetic-64x64.py CKPT --tta
_base_ = ['./linear_sail-tiny_1xb4-300_synthetic-64x64.py']
model = dict(
    backbone=dict(out_indices=(1, 2, 3, -1), norm=True),
    decode_head=dict(in_channels=[256] * 4, in_index=[0, 1, 2, 3]))
