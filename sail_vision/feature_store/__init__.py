"""The on-disk format of extracted features, and the one reader every consumer uses.

A feature folder (written by ``sail-vision extract`` or :func:`write_feature_dir`) holds:

- ``layer-{k}_{pool}.npy`` per (layer, pool): pooled features (N, D); patch features
  (N, nh, nw, D) at a fixed resolution, or concatenated rows (total patches, D) plus
  ``layer-{k}_patch_offsets.npy`` (N+1,) int64 at native resolution;
- ``valid.npy`` (N,) bool: True for rows whose image was processed; failed rows are zeros on
  disk and are never handed out as features by :class:`FeatureDir`;
- ``labels.npy`` (N,) int64 when labels are known; ``paths.txt`` (one path per line);
- ``failures.jsonl`` (one ``{"index", "path", "reason"}`` object per failed image);
- with a segmentation source, ``masks.npy``: each image's uint8 label map (ignore index 255) on
  its preprocessed pixels (patch grid times patch size, so patch maps and masks align): (N, H, W)
  at a fixed resolution, or concatenated flattened rows (sum of H_i*W_i,) plus
  ``mask_offsets.npy`` (N+1,) int64 at native resolution; ``mask_paths.txt`` names each row's
  mask file; the manifest's ``"masks"`` entry describes them (:func:`mask_manifest_entry`);
- ``manifest.json`` describing all of it; ``"complete": false`` while an extraction runs.

Every array opens with ``np.load(path, mmap_mode="r")``. While an extraction runs, its parts live
in ``parts/`` (each a feature folder of this format; see ``extraction.parts``), its working
files in ``.extract/`` and a lock file (``folder_lock.LOCK_FILE``) names the writer; both are
gone once it finishes. :func:`extraction_entries` says which entries of a folder are the
extractor's own: ``--overwrite`` removes only those, and refuses when anything else is there.

This package is the only code that names these files, reads ``paths.txt`` / ``failures.jsonl``,
builds or checks manifests, and replaces files: :mod:`.format` (names, manifest),
:mod:`.atomic_io` (atomic writes), :mod:`.reader` (:func:`open_feature_dir`), :mod:`.writer`
(:func:`write_feature_dir`), :mod:`.folders` (own entries, cleanup, free space).
"""

from .atomic_io import atomic_file, atomic_save_npy, atomic_write, atomic_write_text, fsync_dir, temporary_target
from .folders import (check_free_space, describe_bytes, extraction_entries, foreign_part_entries, is_part_folder_name,
                      listing, refuse_foreign_part_entries, remove_extraction_files, remove_parts,
                      remove_temporary_files, unallocated_bytes)
from .format import (FAILURES_FILE, FORMAT_NAME, FORMAT_VERSION, LABELS_FILE, LAYOUTS, MANIFEST_FILE, MASK_IGNORE_INDEX,
                     MASK_OFFSETS_FILE, MASK_PATHS_FILE, MASKS_FILE, OWN_FILES, PARTS_DIR, PATCH_GRIDS_FILE, PATHS_FILE,
                     STATE_DIR, VALID_FILE, FeatureStoreError, check_manifest, count_lines, feature_name,
                     manifest_files, manifest_header, mask_manifest_entry, npy_header, offsets_file_name,
                     parse_feature_name, parted_files, read_manifest, software_versions, write_manifest)
from .reader import FeatureDir, PartedArray, open_feature_dir, read_failures, read_lines
from .writer import write_feature_dir, write_lines

__all__ = [
    "FAILURES_FILE", "FORMAT_NAME", "FORMAT_VERSION", "LABELS_FILE", "LAYOUTS", "MANIFEST_FILE", "MASK_IGNORE_INDEX",
    "MASK_OFFSETS_FILE", "MASK_PATHS_FILE", "MASKS_FILE", "OWN_FILES", "PARTS_DIR", "PATCH_GRIDS_FILE", "PATHS_FILE",
    "STATE_DIR", "VALID_FILE", "FeatureDir", "FeatureStoreError", "PartedArray", "atomic_file", "atomic_save_npy",
    "atomic_write", "atomic_write_text", "check_free_space", "check_manifest", "count_lines", "describe_bytes",
    "extraction_entries", "feature_name", "foreign_part_entries", "fsync_dir", "is_part_folder_name", "listing",
    "manifest_files", "manifest_header", "mask_manifest_entry", "npy_header", "offsets_file_name", "open_feature_dir",
    "parse_feature_name", "parted_files", "read_failures", "read_lines", "read_manifest",
    "refuse_foreign_part_entries", "remove_extraction_files", "remove_parts", "remove_temporary_files",
    "software_versions", "temporary_target", "unallocated_bytes", "write_feature_dir", "write_lines", "write_manifest",
]
