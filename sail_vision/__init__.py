"""sail-vision: SAIL (a single-transformer vision-language model) as a vision backbone."""

from .checkpoint import SailCheckpoint, VisionTokenIds, read_vision_token_ids
from .config import SailConfig, load_sail_config
from .devices import resolve_device, resolve_dtype
from .encoder import SailEncoder
from .errors import CheckpointError, ImageError, InputError, LayerIndexError, SailVisionError
from .layer_indices import resolve_layer_indices
from .outputs import POOLS, SailEncoding
from .preprocessing import image_to_patches, native_resize_size

__version__ = "0.1.0"

__all__ = [
    "SailEncoder", "SailEncoding", "SailConfig", "SailCheckpoint", "VisionTokenIds", "POOLS",
    "load_sail_config", "read_vision_token_ids", "resolve_device", "resolve_dtype", "resolve_layer_indices",
    "image_to_patches", "native_resize_size",
    "SailVisionError", "CheckpointError", "ImageError", "InputError", "LayerIndexError",
]

# mmseg users: when mmseg is already imported, register SAILBackbone / SAILLinearHead now (cheap,
# since mmseg's import cost is already paid). Otherwise `import sail_vision.mmseg`, or
# `custom_imports=dict(imports=['sail_vision.mmseg'])` in a config, registers them; plain
# `import sail_vision` never imports mmseg itself, so it stays fast.
import sys as _sys

if _sys.modules.get("mmseg") is not None:
    from . import mmseg as _mmseg  # noqa: F401,E402
