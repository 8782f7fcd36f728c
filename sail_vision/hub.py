"""Hugging Face hub ids -> a local checkpoint folder holding only the shards the requested layers need.

``ORG/NAME[@REVISION]`` is fetched with ``huggingface_hub.hf_hub_download`` into the standard Hugging
Face cache (``HF_HOME`` / ``HF_HUB_CACHE``; ``HF_ENDPOINT`` picks the server): ``config.json``, the
tokenizer files and the weight index first, then only the shards holding the tensors an encoder with
``max_layer`` reads (:meth:`~.checkpoint.SailCheckpoint.encoder_files`: one owner of that knowledge).
Everything is pinned to the commit the revision resolves to, so one load never mixes two commits; the
cache is reused and ``HF_HUB_OFFLINE=1`` loads from it. Failures are one-line ``CheckpointError``s.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError

#: ``ORG/NAME`` or ``ORG/NAME@REVISION`` (the hub's own character rules for names).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<revision>[^\s@]+))?$")
CONFIG_FILE = "config.json"
#: Tokenizer files that may hold the vision token ids (read by ``checkpoint.read_vision_token_ids``).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json")


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` has the form of a hub id (``ORG/NAME[@REVISION]``)."""
    return bool(_HUB_ID.match(spec)) and ".." not in spec.split("@")[0]


def parse_hub_id(spec: str) -> tuple[str, str]:
    """``"ORG/NAME@REV"`` -> (``"ORG/NAME"``, ``"REV"``); the revision defaults to ``main``."""
    match = _HUB_ID.match(spec)
    if not match or not is_hub_id(spec):
        raise CheckpointError(f"{spec!r} is not a hub id: use ORG/NAME or ORG/NAME@REVISION")
    return match["repo"], match["revision"] or "main"


def fetch_checkpoint(spec: str, *, max_layer: int | None = None, weights: bool = True, progress: bool = True):
    """Download what an encoder with ``max_layer`` needs from hub id ``spec`` (with ``weights=False``
    only config, tokenizer and index); the opened (possibly ``partial``) :class:`~.checkpoint.SailCheckpoint`,
    with ``repo_id`` and ``revision`` (the commit sha) set."""
    from huggingface_hub import try_to_load_from_cache

    from .checkpoint import SINGLE_WEIGHTS_FILE, WEIGHTS_INDEX_FILE, SailCheckpoint

    repo_id, revision = parse_hub_id(spec)
    fetch = _Fetcher(spec, repo_id, revision, progress)
    config = fetch.required(CONFIG_FILE, "config.json")
    folder = Path(config).parent
    commit = folder.name  # the snapshot folder is named by the commit the revision resolved to
    fetch.revision = commit
    for name in TOKENIZER_FILES:
        fetch.optional(name)
    if fetch.optional(WEIGHTS_INDEX_FILE) is None:
        if not weights and not isinstance(try_to_load_from_cache(repo_id, SINGLE_WEIGHTS_FILE, revision=commit), str):
            raise CheckpointError(f"hub repo {repo_id} keeps its weights in one {SINGLE_WEIGHTS_FILE}, not in the "
                                  f"cache yet; describing it needs the whole file: load it once first")
        fetch.required(SINGLE_WEIGHTS_FILE, f"{WEIGHTS_INDEX_FILE} or {SINGLE_WEIGHTS_FILE}")
        return _open(SailCheckpoint, folder, spec, repo_id, commit)
    ckpt = _open(SailCheckpoint, folder, spec, repo_id, commit)
    if not weights:
        return ckpt
    for file in ckpt.encoder_files(max_layer):
        fetch.required(file.relative_to(folder).as_posix(), "a shard the weight index lists")
    return _open(SailCheckpoint, folder, spec, repo_id, commit)


def _open(cls, folder: Path, spec: str, repo_id: str, commit: str):
    try:
        return cls(folder, partial=True, repo_id=repo_id, revision=commit)
    except CheckpointError as exc:
        raise CheckpointError(f"hub checkpoint {spec} (commit {commit[:12]}) is not a usable SAIL checkpoint: "
                              f"{exc}") from None


def _entry_errors():
    """(not on the hub, not in the cache): huggingface_hub >= 1.0 names the first
    RemoteEntryNotFoundError; before, EntryNotFoundError (of which the second is a subclass, so
    callers test the second first)."""
    from huggingface_hub import errors

    return getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError), errors.LocalEntryNotFoundError


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


class _Fetcher:
    """``hf_hub_download`` of one repo's files with each hub failure turned into a one-line error."""

    def __init__(self, spec: str, repo_id: str, revision: str, progress: bool):
        self.spec, self.repo_id, self.revision, self.progress = spec, repo_id, revision, progress

    def optional(self, filename: str) -> str | None:
        """The local path of ``filename``, or None when the repo has no such file."""
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.file_download import _CACHED_NO_EXIST

        remote_missing, not_cached = _entry_errors()
        try:
            return self._download(filename)
        except not_cached:
            if try_to_load_from_cache(self.repo_id, filename, revision=self.revision) is _CACHED_NO_EXIST:
                return None  # offline, but an earlier online look-up found the repo has no such file
            raise self._unreachable(filename) from None
        except remote_missing:
            return None

    def required(self, filename: str, what: str) -> str:
        """The local path of ``filename``; an error saying the repo is not a SAIL checkpoint if absent."""
        remote_missing, not_cached = _entry_errors()
        try:
            return self._download(filename)
        except not_cached:
            raise self._unreachable(filename) from None
        except remote_missing:
            raise CheckpointError(f"hub repo {self.repo_id} (revision {self.revision}) has no {filename}: it is "
                                  f"not a SAIL checkpoint (SAIL needs {what}); check the repo id") from None

    def _download(self, filename: str) -> str:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        quiet = not self.progress and not are_progress_bars_disabled()
        if quiet:
            disable_progress_bars()
        try:
            return hf_hub_download(self.repo_id, filename, revision=self.revision)
        except EntryNotFoundError:
            raise  # the callers decide whether the file may be absent (on the hub or in the cache)
        except RevisionNotFoundError:
            raise CheckpointError(f"hub repo {self.repo_id} has no revision {self.revision!r}; use a branch, tag "
                                  f"or commit sha the repo has (ORG/NAME@REVISION)") from None
        except GatedRepoError:
            raise CheckpointError(f"hub repo {self.repo_id} is gated: accept its terms on the hub and log in "
                                  f"(`hf auth login` or HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise CheckpointError(f"{self.spec}: no such local folder, and no hub repo {self.repo_id} (or it is "
                                  f"private: log in with `hf auth login` or set HF_TOKEN); check the name") from None
        except HfHubHTTPError as exc:
            raise CheckpointError(f"hub repo {self.repo_id}: downloading {filename} failed "
                                  f"({str(exc).splitlines()[0]})") from None
        finally:
            if quiet:
                enable_progress_bars()

    def _unreachable(self, filename: str) -> CheckpointError:
        """Offline (or no network) and ``filename`` is not in the cache."""
        from huggingface_hub import constants

        what = f"{filename} of {self.repo_id}@{self.revision} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        if _offline():
            why = (f"HF_HUB_OFFLINE is set and {what}; unset HF_HUB_OFFLINE to download it, or set HF_HUB_CACHE / "
                   f"HF_HOME to the cache that holds it")
        else:
            why = (f"the hub at {constants.ENDPOINT} cannot be reached and {what}; check the network or HF_ENDPOINT, "
                   f"or set HF_HUB_CACHE / HF_HOME to a cache that holds it and HF_HUB_OFFLINE=1")
        return CheckpointError(f"{self.spec}: no such local folder, and as a hub id: {why}")
