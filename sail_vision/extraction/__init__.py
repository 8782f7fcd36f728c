"""Dataset-scale feature extraction: parts, planning, packed batching, in-place .npy writing, resume,
torchrun / task arrays / Ray.

``extract()`` is the entry point (``sail-vision extract`` on the command line); read the
results with :func:`sail_vision.feature_store.open_feature_dir`.
"""

import os

# Byte-identical results after a resume or across torchrun ranks need matrix products whose
# bits do not depend on the number of threads. MKL's "strict" conditional-numerical-
# reproducibility mode gives that on CPU at no measurable cost; MKL reads this variable at its
# first use, so it is set when this package is imported (set MKL_CBWR yourself to override).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from ..sources import ImageSource, resolve_inputs  # noqa: E402
from .options import ExtractOptions  # noqa: E402
from .results import ExtractionError, ExtractionResult  # noqa: E402
from .runner import extract  # noqa: E402

__all__ = ["extract", "ExtractOptions", "ExtractionResult", "ExtractionError", "resolve_inputs", "ImageSource"]
