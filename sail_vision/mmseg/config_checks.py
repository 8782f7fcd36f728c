"""Checks on an mmengine config before anything is built from it.

mmengine's Runner logs the whole config (hundreds of lines) before it builds the model and the
datasets, so a typo in ``--cfg-options`` or a missing folder used to end in a traceback under
that dump. The tools and ``sail-vision segment`` call these functions first; each problem is a
one-line :class:`~sail_vision.errors.SailVisionError` naming the option, value or path.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError, SailVisionError
from .backbone import SAILBackbone
from .checkpoints import check_checkpoint_file

_MISSING = object()
_URL_PREFIXES = ("http://", "https://", "s3://", "pavi://", "open-mmlab://", "torchvision://")


def load_config(path: str | Path, cfg_options: Sequence[str] | dict | None = None):
    """``Config.fromfile(path)`` with ``cfg_options`` (``KEY=VALUE`` strings or a dict) applied."""
    from mmengine.config import Config

    if not Path(path).is_file():
        raise InputError(f"config file {str(path)!r} not found")
    try:
        cfg = Config.fromfile(str(path))
    except (SyntaxError, ImportError, FileNotFoundError, KeyError, TypeError, ValueError, NameError) as exc:
        raise InputError(f"config file {str(path)!r} cannot be read: {_first_line(exc)}") from None
    options = cfg_options if isinstance(cfg_options, dict) else parse_cfg_options(cfg_options)
    apply_cfg_options(cfg, options)
    return cfg


def parse_cfg_options(items: Sequence[str] | None) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}``, values parsed as mmengine's DictAction does."""
    from mmengine.config import DictAction

    items = list(items or [])
    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise InputError(f"--cfg-options {item!r}: write KEY=VALUE, e.g. train_cfg.max_iters=100")
    namespace = argparse.Namespace()
    DictAction(option_strings=["--cfg-options"], dest="cfg_options")(None, namespace, items)
    return namespace.cfg_options


def apply_cfg_options(cfg, options: dict) -> None:
    """Merge ``options`` into ``cfg``; a value of the wrong kind for an existing entry is an error."""
    for key, value in options.items():
        old = _lookup(cfg, key)
        if old is _MISSING or old is None or value is None:
            continue
        if isinstance(old, bool) and not isinstance(value, bool):
            raise InputError(f"--cfg-options {key}={value!r}: expected True or False (the config has {old!r})")
        if isinstance(old, (int, float)) and not isinstance(old, bool) and isinstance(value, str):
            raise InputError(f"--cfg-options {key}={value!r}: expected a number (the config has {old!r})")
    try:
        cfg.merge_from_dict(options)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"--cfg-options {' '.join(f'{k}={v!r}' for k, v in options.items())}: "
                         f"{_first_line(exc)}") from None


def check_config(cfg, loaders: Iterable[str] = ()) -> None:
    """Check what can be checked before building: SAIL backbones, data folders, ``load_from``.

    ``loaders`` names the dataloaders the run will use (e.g. ``("train_dataloader",
    "val_dataloader")``); their datasets' ``data_root``, ``data_prefix`` folders and ``ann_file``
    must exist.
    """
    for where, backbone in sail_backbones(cfg):
        try:
            SAILBackbone.check_config(backbone)
        except SailVisionError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    for name in loaders:
        loader = cfg.get(name)
        if loader and loader.get("dataset") is not None:
            for where, dataset in _datasets(loader["dataset"], f"{name}.dataset"):
                _check_dataset_paths(where, dataset)
    load_from = cfg.get("load_from")
    if load_from and not str(load_from).startswith(_URL_PREFIXES):
        check_checkpoint_file(load_from)


def sail_backbones(cfg):
    """``(where, backbone config)`` for every SAILBackbone in ``cfg.model`` and ``cfg.tta_model``."""
    for root in ("model", "tta_model"):
        yield from _find_type(cfg.get(root), root, SAILBackbone.__name__)


def _find_type(node, where: str, type_name: str):
    if isinstance(node, dict):
        if node.get("type") in (type_name, SAILBackbone):
            yield where, node
        for key, value in node.items():
            yield from _find_type(value, f"{where}.{key}", type_name)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _find_type(value, f"{where}[{i}]", type_name)


def _datasets(dataset, where: str):
    """The leaf dataset configs under wrappers (ConcatDataset's ``datasets``, RepeatDataset's ``dataset``)."""
    if isinstance(dataset.get("datasets"), (list, tuple)):
        for i, inner in enumerate(dataset["datasets"]):
            yield from _datasets(inner, f"{where}.datasets[{i}]")
    elif isinstance(dataset.get("dataset"), dict):
        yield from _datasets(dataset["dataset"], f"{where}.dataset")
    else:
        yield where, dataset


def _check_dataset_paths(where: str, dataset) -> None:
    root = dataset.get("data_root")
    if root and not Path(root).is_dir():
        raise InputError(f"{where}.data_root {root!r} is not a folder (relative paths start at the current "
                         f"directory); set it with --cfg-options {where}.data_root=/path/to/data")
    base = Path(root or "")
    for key, value in (dataset.get("data_prefix") or {}).items():
        if value and not (base / value).is_dir():
            raise InputError(f"{where}.data_prefix.{key} {value!r}: folder {str(base / value)!r} not found")
    ann_file = dataset.get("ann_file")
    if ann_file and not (base / ann_file).is_file():
        raise InputError(f"{where}.ann_file {ann_file!r}: file {str(base / ann_file)!r} not found")


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                return _MISSING
            node = node[int(part)]
        elif hasattr(node, "keys") and part in node.keys():  # dicts and mmengine's Config
            node = node[part]
        else:
            return _MISSING
    return node


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
