"""`sail-vision extract` on the command line: options, exit status, messages."""

from __future__ import annotations

import argparse

import pytest

from sail_vision.cli import build_parser, main
from sail_vision.feature_store import open_feature_dir

from image_factory import write_bad_inputs


def _run(capsys, *argv):
    code = main(["extract", *map(str, argv), "--workers", "0", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_extract_with_negative_layers_and_several_pools(tiny_checkpoint, mixed_folder, tmp_path, capsys):
    code, out, err = _run(capsys, "--checkpoint", tiny_checkpoint, "--images", mixed_folder, "--out", tmp_path / "o",
                          "--layers", "-2", "-1", "--pool", "mean", "end", "--resolution", "16x24")
    assert code == 0, err
    assert out.strip().startswith("extracted 6 images (6 ok, 0 failed) in ")
    features = open_feature_dir(tmp_path / "o")
    assert features.names == ["layer-3_mean", "layer-3_end", "layer-4_mean", "layer-4_end"]
    assert features.manifest["preprocessing"]["resolution"] == [16, 24]


def test_failures_give_exit_status_1_unless_allowed(tiny_checkpoint, mixed_folder, tmp_path, capsys):
    bad = write_bad_inputs(mixed_folder / "bad")
    args = ["--checkpoint", tiny_checkpoint, "--images", mixed_folder, "--out", tmp_path / "o"]
    code, out, err = _run(capsys, *args)
    assert code == 1
    assert f"{len(bad)} image(s) failed" in err and "failures.jsonl" in err
    assert f"(6 ok, {len(bad)} failed)" in out
    code, _, _ = _run(capsys, *args, "--overwrite", "--allow-failures")
    assert code == 0
    code, _, err = _run(capsys, *args, "--overwrite", "--strict")
    assert code == 2 and "--strict" in err and err.count("\n") == 1


@pytest.mark.parametrize("option, value, message", [
    ("--resolution", "30", "multiple of the patch size 8"),
    ("--layers", "7", "layer index 7 is out of range"),
    ("--images", "/nonexistent/folder", "no such folder or list file"),
    ("--checkpoint", "/nonexistent/ckpt", "not a directory"),
])
def test_bad_options_are_one_line_errors(tiny_checkpoint, mixed_folder, tmp_path, capsys, option, value, message):
    args = {"--checkpoint": str(tiny_checkpoint), "--images": str(mixed_folder), "--out": str(tmp_path / "o"),
            option: value}
    code, _, err = _run(capsys, *[x for pair in args.items() for x in pair])
    assert code == 2
    assert err.startswith("sail-vision extract: error:") and message in err and "Traceback" not in err


def test_help_explains_every_option_with_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("extract", "pca", "demo"):
        for action in sub.choices[command]._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            text = action.help or ""
            is_flag = isinstance(action, argparse._StoreTrueAction)
            assert is_flag or "default" in text or "required" in text, (command, action.option_strings)
