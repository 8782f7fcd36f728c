"""Extract features of synthetic images with a tiny random checkpoint, then probe them and predict."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from sail_vision.cli import main


def _write_class_folders(root, per_class=6):
    """Two classes that differ in colour: reddish and bluish noise images of varied sizes."""
    rng = np.random.default_rng(0)
    for label, channel in (("blue", 2), ("red", 0)):
        for i in range(per_class):
            h, w = (32, 40) if i % 2 else (40, 32)
            pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(160, 256, (h, w), dtype=np.uint8)
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")


def test_extract_then_probe(tiny_checkpoint, tmp_path, capsys):
    from sail_vision.extraction import extract

    _write_class_folders(tmp_path / "train")
    _write_class_folders(tmp_path / "val", per_class=3)
    for split in ("train", "val"):
        extract(tiny_checkpoint, tmp_path / split, tmp_path / f"feat-{split}", layers=[1, 2, -1],
                pools=["mean", "end"], resolution=32, workers=0, batch_size=8, progress=False, layout="imagenet")
    for method in ("linear", "knn", "logreg"):
        out = tmp_path / f"probe-{method}"
        code = main(["probe", "--train", str(tmp_path / "feat-train"), "--val", str(tmp_path / "feat-val"),
                     "--features", "layer-4_mean", "layer-4_end", "--method", method, "--ks", "1,3",
                     "--Cs", "0.1,10", "--epochs", "20", "--batch-size", "4", "--holdout-fraction", "0.34",
                     "--out", str(out), "--quiet"])
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_train"] == 12 and summary["num_val"] == 6 and summary["num_classes"] == 2
        assert summary["top1"] is not None and 0 <= summary["top1"] <= 100
        assert (out / "head.json").is_file() and (out / "accuracy.png").is_file()

    sweep = tmp_path / "probe-layers"
    assert main(["probe", "--train", str(tmp_path / "feat-train"), "--val", str(tmp_path / "feat-val"),
                 "--all-layers", "--epochs", "5", "--batch-size", "4", "--holdout-fraction", "0.34",
                 "--lrs", "0.01,0.1", "--out", str(sweep), "--quiet"]) == 0
    summary = json.loads((sweep / "summary.json").read_text())
    assert [row["layer"] for row in summary["layers"]] == [1, 2, 4] and (sweep / "layers.png").is_file()
    head = json.loads((sweep / "head.json").read_text())
    assert head["classes"] == ["blue", "red"]
    provenance = head["provenance"]
    assert provenance["preprocessing"]["resolution"] == 32 and provenance["checkpoint"]["weights_digest"]
    layer = int(summary["feature"].removeprefix("layer-").removesuffix("_mean"))
    assert provenance["features"] == [{"name": summary["feature"], "layer": layer, "pool": "mean", "dim": 256}]
    assert summary["best_layer"]["feature"] == summary["feature"]  # the chosen head is the best layer's

    # the same images extracted at another resolution: the head refuses them, naming the difference
    extract(tiny_checkpoint, tmp_path / "val", tmp_path / "feat-val-64", layers=[1, 2, -1], pools=["mean"],
            resolution=64, workers=0, batch_size=8, progress=False, layout="imagenet")
    code = main(["probe", "--predict", str(sweep), "--val", str(tmp_path / "feat-val-64"), "--out",
                 str(tmp_path / "p")])
    assert code == 2 and "preprocessing resolution 64 != 32" in capsys.readouterr().err
    assert main(["probe", "--predict", str(sweep), "--val", str(tmp_path / "feat-val"), "--out",
                 str(tmp_path / "p")]) == 0
    rows = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[1].split(",")[1].endswith(".png") and rows[1].split(",")[5] in ("blue", "red")
