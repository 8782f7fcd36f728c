"""Default grid and settings of the linear segmentation probe (plain Python, so the CLI shows them cheaply)."""

#: 7 log-spaced learning rates, 1e-3 .. 1 (two per decade), for the segmentation grid.
DEFAULT_SEG_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)
DEFAULT_SEG_WEIGHT_DECAYS = (0.0, 1e-4)
DEFAULT_SEG_EPOCHS = 10
#: Images per step (images of one size are batched together; a size with fewer images makes smaller batches).
DEFAULT_SEG_BATCH_SIZE = 8
#: Upsampled logits (images x heads x classes x H x W) computed at once; heads are processed in groups below it.
DEFAULT_MAX_LOGITS = 16_000_000
#: Val images drawn in predictions.png.
DEFAULT_SHOW_IMAGES = 4

#: The depth grid's defaults: AdamW as DINOv3's NYUv2 linear probe (lr 3e-4, wd 1e-4), with points around them.
DEFAULT_DEPTH_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
DEFAULT_DEPTH_WEIGHT_DECAYS = (1e-4, 1e-3)

#: The label masks use for pixels no loss or metric counts (mmseg's ignore_index).
IGNORE_INDEX = 255
