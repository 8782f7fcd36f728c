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
