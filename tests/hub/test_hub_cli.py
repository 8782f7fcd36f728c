"""Hub ids on the command line: `info` and `extract` take ORG/NAME[@REVISION]; the manifest records
the commit and a resume refuses another one."""

from __future__ import annotations

import numpy as np

from sail_vision import SailEncoder
from sail_vision.cli import main
from sail_vision.feature_store import open_feature_dir

from image_factory import save_rgb

from .conftest import COMMIT, REPO


def _images(folder):
    folder.mkdir()
    for i in range(3):
        save_rgb(folder / f"{i}.png", 24 + 8 * i, 16, seed=i)
    return folder


def test_info_fetches_no_shard(hub, capsys):
    assert main(["info", REPO, "--max-layer", "1"]) == 0
    out = capsys.readouterr().out
    assert f"hub repo: {REPO} at commit {COMMIT}" in out
    assert "0 of them downloaded" in out and "not downloaded yet" in out
    assert not any(name.endswith(".safetensors") for name in hub.downloaded(REPO))
    SailEncoder.from_pretrained(REPO, max_layer=1)  # now layer 1's shards are in the cache
    assert main(["info", REPO, "--max-layer", "1"]) == 0
    assert "an encoder with max_layer=1 reads 0.00" in capsys.readouterr().out


def test_extract_from_a_hub_id_equals_a_local_extract_and_resume_refuses_another_revision(
        hub, sharded_checkpoint, tmp_path, capsys):
    images = _images(tmp_path / "imgs")
    common = ["--images", images, "--layers", "1", "--pool", "mean", "--workers", "0", "--no-progress"]
    assert main(["extract", "--checkpoint", f"{REPO}@v1", "--out", str(tmp_path / "hub"), *map(str, common)]) == 0
    assert main(["extract", "--checkpoint", str(sharded_checkpoint), "--out", str(tmp_path / "local"),
                 *map(str, common)]) == 0
    got, want = open_feature_dir(tmp_path / "hub"), open_feature_dir(tmp_path / "local")
    assert np.array_equal(got.feature("layer-1_mean"), want.feature("layer-1_mean"))
    manifest = got.manifest
    assert manifest["checkpoint"]["repo_id"] == REPO and manifest["checkpoint"]["revision"] == COMMIT
    assert manifest["settings"]["checkpoint_revision"] == COMMIT
    assert "checkpoint_revision" not in want.manifest["settings"]
    shards = {f for f in hub.downloaded(REPO) if f.endswith(".safetensors")}
    assert len(shards) < len(set(hub.repos[REPO]["files"])) - 4  # only layer 1's shards were fetched

    capsys.readouterr()
    hub.repos[REPO]["commit"] = "f" * 40  # the repo moved on: main (and v1) now resolve to another commit
    hub.repos[REPO]["revisions"].add("f" * 40)
    code = main(["extract", "--checkpoint", f"{REPO}@v1", "--out", str(tmp_path / "hub"), "--resume",
                 *map(str, common)])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint_revision" in err, err
    assert err.count("\n") == 1


def test_bad_hub_id_exits_2_with_one_line(hub, tmp_path, capsys):
    code = main(["extract", "--checkpoint", "sail-test/nope", "--images", str(tmp_path), "--out",
                 str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no hub repo sail-test/nope" in err and err.count("\n") == 1
    assert main(["info", f"{REPO}@nope"]) == 2
    assert "has no revision 'nope'" in capsys.readouterr().err
