"""``sail-vision report``: one Markdown page from classification and segmentation result folders."""

from __future__ import annotations

import re

from sail_vision.probes import FeatureInput, run_probe

from .test_segmentation import QUICK, make_store, seg_data


def test_report_tables_intervals_and_plot_links(digits_data, tmp_path, capsys):
    from sail_vision.cli import main
    from sail_vision.probes.segmentation import SegmentationConfig, run_segmentation_probe

    train, val = digits_data
    knn = run_probe(train, val, [FeatureInput(("pixels",))], tmp_path / "runs" / "knn", method="knn", ks=[1, 3],
                    shots=[1, 3], shot_seeds=2, verbose=False, progress=False).summary
    run_segmentation_probe(seg_data(make_store(num_images=12)), seg_data(make_store(num_images=4, seed=1)),
                           [FeatureInput(("layer-2_patch",))], tmp_path / "runs" / "seg", SegmentationConfig(**QUICK),
                           progress=False, verbose=False)
    page_file = tmp_path / "pages" / "report.md"
    assert main(["report", str(tmp_path / "runs" / "knn"), str(tmp_path / "runs" / "seg"), "--out",
                 str(page_file)]) == 0
    page = page_file.read_text()
    lo, hi = knn["top1_ci95"]
    assert f"| knn | pixels | - | - | top-1 {knn['top1']:.2f} [{lo:.2f}, {hi:.2f}] |" in page
    assert "| segmentation | segmentation-linear | layer-2_patch | 2 | - | mIoU " in page
    assert "| 1 | 2 | " in page and "| 3 | 2 | " in page  # few-shot rows
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert {"../runs/knn/accuracy.png", "../runs/knn/few_shot.png", "../runs/seg/confusion.png"} <= set(links)
    assert all((page_file.parent / link).is_file() for link in links)
    assert main(["report", str(tmp_path / "runs" / "knn")]) == 0
    assert "# Probe results" in capsys.readouterr().out


def test_report_refuses_a_folder_without_results(tmp_path, capsys):
    from sail_vision.cli import main

    (tmp_path / "half").mkdir()
    assert main(["report", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no summary.json; not a probe result, or its run did not finish" in err and len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
