"""The error every probe module raises on bad input."""

from ..errors import SailVisionError


class ProbeDataError(SailVisionError, ValueError):
    """Features, labels, class names or settings given to a probe are missing, inconsistent or not finite."""
