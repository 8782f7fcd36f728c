"""Dataset-scale feature extraction: inputs, same-grid batching, in-place .npy writing, resume.

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
from .runner import ExtractionError, ExtractionResult, extract  # noqa: E402

__all__ = ["extract", "ExtractionResult", "ExtractionError", "resolve_inputs", "ImageSource"]
