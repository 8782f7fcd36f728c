"""Where probe features came from, recorded in ``head.json`` and checked before a saved head predicts.

A feature folder's manifest names the checkpoint (weights digest, config fingerprint) and the
preprocessing (resolution, patch size, token cap, ``norm``...) its features were computed with; each
stored feature has a layer, a pool and a width. A head trained on one set of features gives
meaningless scores on features of another checkpoint, layer or resolution, so :func:`mismatches`
lists every difference and prediction refuses to run while there is one.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

FOLDER = "feature-folder"
ARRAYS = "arrays"


def folder_provenance(manifest: Mapping[str, Any]) -> dict:
    """Provenance of a feature folder, from its manifest (fields the manifest lacks are None)."""
    checkpoint = manifest.get("checkpoint") or {}
    return {"kind": FOLDER,
            "checkpoint": {"weights_digest": checkpoint.get("weights_digest"),
                           "config_fingerprint": checkpoint.get("config_fingerprint"),
                           "path": checkpoint.get("path")},
            "preprocessing": manifest.get("preprocessing"),
            "dtypes": manifest.get("dtypes")}


def arrays_provenance(files: Sequence[str]) -> dict:
    """Provenance of plain arrays: only their files are known."""
    return {"kind": ARRAYS, "files": list(files)}


def input_provenance(source: Mapping[str, Any], parts: Sequence[str], dims: Sequence[int]) -> dict:
    """``source`` provenance plus the stored features one input reads: name, layer, pool and width."""
    from .inputs import parse_feature_name

    features = []
    for name, dim in zip(parts, dims):
        layer, pool = parse_feature_name(name)
        features.append({"name": name, "layer": layer, "pool": pool, "dim": int(dim)})
    return {**source, "features": features}


def mismatches(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Every way ``actual`` (features offered to a head) differs from ``expected`` (what it was trained on).

    Compared: the kind of source (a folder's features cannot be checked against plain arrays), the
    checkpoint's weights digest and config fingerprint, every preprocessing setting both sides
    describe, and the name, layer, pool and width of every stored feature. Not compared: the
    checkpoint's path (folders move), the compute and save dtypes (bfloat16 and float32 features
    of one checkpoint differ by about 1 %), and which files plain arrays came from.
    """
    found = []
    if expected.get("kind") != actual.get("kind"):
        if expected.get("kind") == FOLDER:
            found.append("the head was trained on a feature folder, these features are plain arrays with no "
                         "record of their checkpoint or preprocessing")
        else:
            found.append("the head was trained on plain arrays, these features come from a feature folder")
        return found
    if expected.get("kind") == FOLDER:
        want, have = expected.get("checkpoint") or {}, actual.get("checkpoint") or {}
        for key in ("weights_digest", "config_fingerprint"):
            if want.get(key) != have.get(key):
                found.append(f"checkpoint {key} {have.get(key)} != {want.get(key)}")
        want_pre, have_pre = expected.get("preprocessing"), actual.get("preprocessing")
        if (want_pre is None) != (have_pre is None):
            found.append(f"preprocessing {have_pre} != {want_pre}")
        elif want_pre is not None:
            for key in sorted(set(want_pre) & set(have_pre)):
                if want_pre[key] != have_pre[key]:
                    found.append(f"preprocessing {key} {have_pre[key]!r} != {want_pre[key]!r}")
    want_features = [(f["name"], f["dim"]) for f in expected.get("features", [])]
    have_features = [(f["name"], f["dim"]) for f in actual.get("features", [])]
    if want_features != have_features:
        describe = lambda items: " + ".join(f"{n} ({d} dims)" for n, d in items) or "none"  # noqa: E731
        found.append(f"features {describe(have_features)} != {describe(want_features)}")
    return found
