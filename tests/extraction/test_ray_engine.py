"""``--engine ray`` on a local Ray instance with 2 CPU actors writes the bytes of one process."""

from __future__ import annotations

import pytest

from sail_vision.errors import InputError
from sail_vision.extraction import extract
from sail_vision.extraction import ExtractionError

from feature_dirs import compare_feature_dirs
from image_factory import save_rgb

pytest.importorskip("ray.data")

OPTIONS = dict(layers=[1, -1], pools=["patch", "mean"], batch_size=2, workers=0, progress=False, part_size=3)
RAY = dict(engine="ray", ray_actors=2, ray_cpus_per_actor=1)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    for i in range(10):
        save_rgb(root / f"{i:02d}.png", (16, 40, 24)[i % 3], (16, 24)[i % 2], seed=i)
    return root


def test_ray_actors_equal_one_process_and_resume_after_an_actor_stops(tiny_checkpoint, images, tmp_path):
    reference = extract(tiny_checkpoint, images, tmp_path / "one", **OPTIONS)
    good = (images / "04.png").read_bytes()
    (images / "04.png").write_bytes(good[: len(good) // 2])  # header intact, pixels truncated: --strict stops
    stopped = r"a Ray actor stopped on part-00001: .*04\.png.*rerun with --resume"
    with pytest.raises(ExtractionError, match=stopped) as info:
        extract(tiny_checkpoint, images, tmp_path / "ray", **OPTIONS, **RAY, strict=True)
    assert "\n" not in str(info.value)
    (images / "04.png").write_bytes(good)
    result = extract(tiny_checkpoint, images, tmp_path / "ray", **OPTIONS, **RAY, strict=True, resume=True)
    assert (result.num_items, result.num_valid) == (10, 10)
    compare_feature_dirs(result.out, reference.out)


def test_ray_refuses_task_options(tiny_checkpoint, images, tmp_path):
    with pytest.raises(InputError, match="--engine ray schedules the parts itself"):
        extract(tiny_checkpoint, images, tmp_path / "out", **OPTIONS, **RAY, num_tasks=2, task_index=0)
    with pytest.raises(InputError, match="--engine 'spark'"):
        extract(tiny_checkpoint, images, tmp_path / "out", **OPTIONS, engine="spark")


# ---------------------------------------------------------------------------------- defaults, any cluster
def test_ray_on_its_default_options_fits_this_machine_without_deprecated_arguments(tiny_checkpoint, images, tmp_path,
                                                                                   monkeypatch):
    """No --ray-actors / --ray-cpus-per-actor: the actors fit the node found (this machine may have 2 CPUs)."""
    import warnings

    from ray.data._internal import util as ray_data_util

    logged = []
    monkeypatch.setattr(ray_data_util.logger, "warning", lambda message, *a, **k: logged.append(str(message)))
    reference = extract(tiny_checkpoint, images, tmp_path / "one", **OPTIONS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = extract(tiny_checkpoint, images, tmp_path / "ray", **OPTIONS, engine="ray")
    deprecated = [m for m in logged if "deprecat" in m.lower()]
    deprecated += [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))
                   and "sail_vision" in (w.filename or "")]  # warned at our own call
    assert not deprecated, deprecated
    assert (result.num_items, result.num_valid) == (10, 10)
    compare_feature_dirs(result.out, reference.out)


def test_ray_cli_on_defaults_shows_a_part_bar_and_none_of_rays_logs(tiny_checkpoint, images, tmp_path):
    import subprocess

    from feature_dirs import extract_command

    out = tmp_path / "ray"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, "--layers", "1",
                              "-1", "--pool", "patch", "mean", "--batch-size", 2, "--workers", 0, "--part-size", 3,
                              "--engine", "ray")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "extracting 4 parts on 1 Ray actor(s)" in result.stderr and "4/4" in result.stderr, result.stderr
    noise = [line for line in result.stderr.splitlines()
             if any(s in line for s in ("INFO", "WARNING", "(raylet)", "(pid=", "Started a local Ray", "Running Dataset",
                                        "deprecated"))]
    assert not noise, noise
    assert "extracted 10 images" in result.stdout


def test_an_actor_that_can_never_be_placed_is_a_one_line_error(tiny_checkpoint, images, tmp_path):
    from sail_vision.extraction.ray_engine import actor_resources

    node = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    assert actor_resources(node, use_gpus=False, cpus_per_actor=None) == (2, 0)
    assert actor_resources([{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0}}], use_gpus=True,
                           cpus_per_actor=None) == (1, 1)
    with pytest.raises(InputError, match="no GPU node, so GPU actors can never be placed"):
        actor_resources(node, use_gpus=True, cpus_per_actor=None)
    with pytest.raises(InputError, match=r"--ray-cpus-per-actor 4: the largest node .* has 2 CPU"):
        actor_resources(node, use_gpus=False, cpus_per_actor=4)
    import os
    import time

    too_many = (os.cpu_count() or 1) + 1
    started = time.monotonic()
    with pytest.raises(InputError, match=f"--ray-cpus-per-actor {too_many}: the largest node") as info:
        extract(tiny_checkpoint, images, tmp_path / "out", **OPTIONS, engine="ray", ray_cpus_per_actor=too_many)
    assert "\n" not in str(info.value) and time.monotonic() - started < 120


def test_an_actor_with_a_cuda_error_exits_and_its_part_is_retried(tiny_checkpoint, images, tmp_path, monkeypatch):
    from sail_vision.extraction.ray_engine import FAKE_CUDA_ERROR_ENV, is_cuda_error

    assert is_cuda_error(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_cuda_error(RuntimeError("shape mismatch")) and not is_cuda_error(ValueError("CUDA error"))
    marker = tmp_path / "fake-cuda-error"
    monkeypatch.setenv(FAKE_CUDA_ERROR_ENV, str(marker))
    reference = extract(tiny_checkpoint, images, tmp_path / "one", **OPTIONS)
    result = extract(tiny_checkpoint, images, tmp_path / "ray", **OPTIONS, engine="ray")
    assert marker.is_file()  # the error happened, the actor exited, a fresh one did the part
    compare_feature_dirs(result.out, reference.out)


def test_a_part_that_hits_a_cuda_error_again_on_a_fresh_actor_ends_the_run(tiny_checkpoint, images, tmp_path,
                                                                          monkeypatch):
    from sail_vision.extraction.ray_engine import FAKE_CUDA_ERROR_ENV

    monkeypatch.setenv(FAKE_CUDA_ERROR_ENV, "always")
    with pytest.raises(ExtractionError, match=r"a Ray actor stopped on part-0000\d: RuntimeError: CUDA error.*again, "
                                              r"on a fresh actor") as info:
        extract(tiny_checkpoint, images, tmp_path / "ray", **OPTIONS, engine="ray")
    assert "\n" not in str(info.value)
