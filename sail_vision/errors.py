"""Exception types raised by sail-vision for bad user input.

Every error names the file or value at fault and says what to do, so callers (the CLI, mmseg
configs) can show it as is instead of a traceback from deep inside a library.
"""


class SailVisionError(Exception):
    """Base class for every error sail-vision raises on bad input."""


class CheckpointError(SailVisionError):
    """A SAIL checkpoint folder is missing, incomplete or inconsistent."""


class ImageError(SailVisionError):
    """An image cannot be read or decoded."""


class LayerIndexError(SailVisionError, IndexError):
    """A requested layer index is out of range or not loaded."""


class InputError(SailVisionError, ValueError):
    """A value passed by the user (size, resolution, dtype, tensor shape...) is invalid."""
