"""mmengine checkpoints that load with ``torch.load(weights_only=True)``, and a loader that loads nothing else.

A ``.pth`` file is a pickle, and unpickling can run any code; torch's safe loader
(``weights_only=True``) accepts only tensors, containers and plain values. mmengine's Runner also
saves its MessageHub, whose ``HistoryBuffer`` objects pickle their statistics methods through
``builtins.getattr``, plus numpy arrays and scalars, so its checkpoints are refused; allow-listing
``getattr`` would make safe loading meaningless. This module fixes both ends with mmengine's own
extension points:

- :class:`WeightsOnlyCheckpointHook` (every config here lists it in ``custom_hooks``; the tools add it
  when a config does not) rewrites each checkpoint in ``before_save_checkpoint``: a HistoryBuffer
  becomes a tagged dict of two tensors and its length limit, numpy arrays become tensors and numpy
  scalars Python numbers. The file then holds nothing torch's default safe loader refuses, so it
  loads anywhere without any allow-list (no ``torch.serialization.add_safe_globals`` is needed, and
  none is made). ``after_load_checkpoint`` turns the tagged dicts back into HistoryBuffers before
  ``Runner.resume`` hands them to the MessageHub, so a resumed run logs exactly what an
  uninterrupted one does.
- :func:`load_from_local_weights_only` replaces mmengine's loader for local paths
  (``CheckpointLoader.register_scheme``), which every mmengine / mmseg path goes through
  (``load_from``, ``--resume``, ``init_model``, ``MMSegInferencer``, mmseg's own tools). It always
  passes ``weights_only=True`` (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn safety off) and
  turns a refused file into a one-line :class:`UnsafeCheckpointError` naming the file and the
  objects it holds.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

from ..errors import CheckpointError
from .compat import ensure_mmseg

ensure_mmseg()
from mmengine.hooks import Hook  # noqa: E402
from mmengine.logging import HistoryBuffer  # noqa: E402
from mmengine.registry import HOOKS  # noqa: E402
from mmengine.runner.checkpoint import CheckpointLoader  # noqa: E402

#: The key that marks a dict standing for a HistoryBuffer in a saved checkpoint.
HISTORY_BUFFER_TAG = "__mmengine_history_buffer__"
HOOK_TYPE = "WeightsOnlyCheckpointHook"
DOCS = "docs/segmentation.md, 'Safe checkpoints'"


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds objects other than weights and plain data, so it is not loaded."""


def to_plain(value):
    """``value`` with every HistoryBuffer, numpy array and numpy scalar replaced by safe-loadable data."""
    if isinstance(value, HistoryBuffer):
        return {HISTORY_BUFFER_TAG: True, "log_history": _array_to_tensor(value.data[0]),
                "count_history": _array_to_tensor(value.data[1]), "max_length": int(value.max_length)}
    if isinstance(value, np.ndarray):
        return _array_to_tensor(value)
    if isinstance(value, np.generic):
        return value.item()
    if type(value) is OrderedDict:
        return OrderedDict((k, to_plain(v)) for k, v in value.items())
    if type(value) is dict:
        return {k: to_plain(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value):
    """Inverse of :func:`to_plain` for HistoryBuffers (the MessageHub needs them back as objects)."""
    if type(value) in (dict, OrderedDict):
        if value.get(HISTORY_BUFFER_TAG) is True:
            return HistoryBuffer(value["log_history"].numpy(), value["count_history"].numpy(),
                                 int(value["max_length"]))
        return type(value)((k, from_plain(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(from_plain(v) for v in value)
    return value


def _array_to_tensor(array: np.ndarray):
    if array.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(array))
    return array.tolist()  # strings / objects: plain Python values


@HOOKS.register_module(name=HOOK_TYPE)
class WeightsOnlyCheckpointHook(Hook):
    """Write checkpoints that ``torch.load(weights_only=True)`` accepts, and read them back for resuming.

    Add it with ``custom_hooks = [dict(type='WeightsOnlyCheckpointHook')]``. It runs last among the
    hooks when saving (priority ``LOWEST``), after any hook that adds entries to the checkpoint.

    Args:
        strict: also require a loaded checkpoint to hold exactly the model's weights (same names,
            same shapes), else a one-line :class:`~sail_vision.errors.CheckpointError`. mmengine
            otherwise only warns and evaluates a partly random model. tools/test.py and
            ``tools/train.py --resume`` set it; fine-tuning from ``load_from`` leaves it off.
            Default ``False``.
    """

    priority = "LOWEST"

    def __init__(self, strict: bool = False):
        self.strict = bool(strict)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in list(checkpoint):
            if key != "state_dict":  # tensors only, and an OrderedDict whose _metadata must survive
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.strict:
            check_state_dict_matches(runner.model, checkpoint.get("state_dict", checkpoint),
                                     runner.cfg.get("load_from") or "the checkpoint")
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])


def add_checkpoint_hook(cfg, strict: bool = False) -> bool:
    """Put :class:`WeightsOnlyCheckpointHook` in ``cfg.custom_hooks`` (``strict=True`` also sets its flag on an
    existing entry); True if an entry was added."""
    hooks = list(cfg.get("custom_hooks") or [])
    entries = [h for h in hooks if isinstance(h, dict) and h.get("type") in (HOOK_TYPE, WeightsOnlyCheckpointHook)]
    for entry in entries:
        if strict:
            entry["strict"] = True
    if not entries:
        hooks.append(dict(type=HOOK_TYPE, strict=True) if strict else dict(type=HOOK_TYPE))
    cfg.custom_hooks = hooks
    return not entries


def check_state_dict_matches(model, state_dict, filename) -> None:
    """One-line :class:`CheckpointError` unless ``state_dict`` holds exactly ``model``'s weights.

    Names are compared after removing a ``module.`` prefix (as mmengine does); DDP wrappers and
    test-time-augmentation models are looked through to the segmentor they hold.
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper

    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {re.sub(r"^module\.", "", k): tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [f"{k}: checkpoint {found[k]}, model {expected[k]}" for k in sorted(expected.keys() & found.keys())
                  if expected[k] != found[k]]
    if missing or unexpected or mismatched:
        problems = [f"{len(items)} {what} ({'; '.join(items[:3])}{'; ...' if len(items) > 3 else ''})"
                    for what, items in (("missing", missing), ("unexpected", unexpected),
                                        ("of another shape", mismatched)) if items]
        raise CheckpointError(f"checkpoint {str(filename)!r} does not fit the model of this config: weights "
                              f"{', '.join(problems)}; was it trained with this config?")


def check_checkpoint_file(filename: str) -> None:
    """Fail early, without loading tensors, on a checkpoint that is missing or would be refused.

    Scans the pickle of a ``torch.save`` file for the objects it refers to (nothing is executed);
    files in other formats are left to :func:`load_from_local_weights_only`.
    """
    path = _existing_file(filename)
    if path.endswith(".safetensors"):
        raise CheckpointError(f"checkpoint {str(filename)!r} is a safetensors file (SAIL's own weights go in "
                              f"model.backbone.checkpoint); give a .pth written by tools/train.py")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format, or unreadable: the loader reports it
        return
    if unsafe:
        raise _refused(filename, _describe(unsafe))


def load_from_local_weights_only(filename: str, map_location=None):
    """``torch.load(filename, map_location, weights_only=True)`` with one-line errors.

    Raises :class:`CheckpointError` for a missing or unreadable file and
    :class:`UnsafeCheckpointError` for a file the safe loader refuses (its pickle is never run).
    """
    path = _existing_file(filename)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused(filename, _unsafe_objects(path, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {str(filename)!r} cannot be read ({detail}); is it a file "
                              f"written by torch.save, copied completely?") from None


def _existing_file(filename) -> str:
    path = os.path.expanduser(str(filename))
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {str(filename)!r} is a folder; give a .pth file, e.g. "
                              f"work_dirs/<config name>/iter_N.pth written by tools/train.py")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {str(filename)!r} not found")
    return path


def _refused(filename, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"checkpoint {str(filename)!r} refused: it holds {what} besides weights and plain data, and loading "
        f"such objects can run code, so checkpoints are only loaded with torch.load(weights_only=True). "
        f"Checkpoints written with {HOOK_TYPE} (every sail-vision config has it) load; see {DOCS}")


def _unsafe_objects(path: str, exc: Exception) -> str:
    """The globals a refused checkpoint refers to, found without unpickling it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not torch's zip format: fall back to what the safe loader reported
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return _describe(names)


def _describe(names) -> str:
    names = sorted(set(names))
    if not names:
        return "pickle instructions the safe loader does not accept"
    return f"Python objects ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"


# Local paths: the loader with the empty prefix (mmengine's own load_from_local) is replaced.
CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_weights_only, force=True)
