"""Upstream's own modeling_sail.py against sail-vision: same checkpoint, same inputs, one run.

Two persistent worker processes (``upstream_worker.py``) each load their model once: one in the
upstream environment (``scripts/upstream_env.sh``: upstream's files loaded at run time from
``--upstream``, transformers 4.42), one in sail-vision's environment. This driver sends both
the same inputs (the same preprocessed patches, token ids and 3-D position ids, from the same
random checkpoint) and alternates timed forwards between them round by round (order reversed
every round), together with a ``torch.matmul`` of the model's width in the same dtype, so all
see the same machine state. Medians are reported.

Contenders per (dtype, resolution, batch):

* ``upstream`` - ``SailForCausalLM`` from upstream's ``modeling_sail.py`` run as its example runs
  the image prefix: the whole model (every block, final norm, LM head), ``vision_patches`` with
  ``vision_patch_indices``, 3-D ``position_ids``, the 4-D boolean prefix mask (all True for an
  image alone), ``output_hidden_states=True``, the whole batch in one call. Its cost is the same
  whichever layer is read, so it is timed once and compared with both sail-vision cells;
* ``sail-last`` / ``sail-mid`` - ``SailEncoder.from_pretrained(..., max_layer=k)`` (only blocks
  1..k exist) and ``encode_patches(patches, [k])`` for the last / middle layer;
* ``matmul`` - ``torch.matmul`` of (batch x seq, hidden) by (hidden, hidden) in the same dtype.

Before timing, both sides' hidden states at the middle and last layer are compared (max-abs
difference printed; the run stops if they disagree), so the two do equal work.

Per cell: upstream and sail-vision s/img, ``speed_ratio`` (upstream's median time / sail-vision's;
``paired_ratio``: the median of each round's own ratio, a check against load that drifts),
``flop_ratio`` (analytic matmul FLOPs of upstream's forward / of sail-vision's: the speed ratio
to expect when both run at the same matmul efficiency), ``ratio_vs_flops`` = speed_ratio /
flop_ratio, and each side's analytic FLOP rate as a fraction of the measured matmul rate.

    scripts/upstream_env.sh                          # once: upstream's files + its own venv
    python benchmarks/bench_upstream.py              # full grid, preset 'small' (~6-12 min, 2 cores)
    python benchmarks/bench_upstream.py --quick      # tiny checkpoint, one cell, seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, alternate, cached_checkpoint, median, print_table, run_and_save  # noqa: E402

from sail_vision.errors import SailVisionError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "upstream_worker.py"
UPSTREAM_CACHE = Path(os.environ.get("SAIL_UPSTREAM_CACHE", Path.home() / ".cache" / "sail-vision"))
DEFAULT_UPSTREAM = Path(os.environ.get("SAIL_UPSTREAM_DIR", UPSTREAM_CACHE / "upstream"))
DEFAULT_UPSTREAM_PYTHON = Path(os.environ.get("SAIL_UPSTREAM_PYTHON",
                                              UPSTREAM_CACHE / "upstream-venv" / "bin" / "python"))

#: Largest allowed difference between the two sides' hidden states, relative to the largest
#: |value| of upstream's (float32: the parity tests' 1e-4 scale; bf16: rounding of 2 implementations).
PARITY_TOL = {"float32": 1e-4, "bfloat16": 0.05}
#: The issue's targets: last layer speed ratio >= 0.9 x flop_ratio; middle layer >= 2.2x.
LAST_TARGET_VS_FLOPS = 0.9
MIDDLE_TARGET = 2.2


class UpstreamUnavailable(SailVisionError):
    """The upstream code or its environment is missing (one-line error, exit 2)."""


class WorkerError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- FLOPs
@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    patch: int

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   vocab=cfg["vocab_size"], patch=cfg["vision_patch_size"])


def forward_flops(shape: ModelShape, nh: int, nw: int, blocks: int, lm_head: bool = False) -> float:
    """Matrix-product FLOPs (2 per multiply-add) for one image of nh x nw patches through
    ``blocks`` blocks: the patch embedding, q/k/v/o and the three MLP projections, both attention
    products (q k^T and p v, over the whole sequence), and with ``lm_head`` the LM head on every
    token. Norms, rotary, softmax and element-wise work are not counted."""
    n = nh * nw
    seq = n + 2  # <vision> patches </vision>
    d, f = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_block = (2 * seq * d * (q + 2 * kv)  # q, k, v projections
                 + 2 * seq * q * d  # o projection
                 + 2 * 2 * seq * seq * q  # q k^T and p v
                 + 2 * seq * 3 * d * f)  # gate, up, down
    total = 2 * n * 3 * shape.patch ** 2 * d + blocks * per_block
    if lm_head:
        total += 2 * seq * d * shape.vocab
    return float(total)


def flop_ratio(shape: ModelShape, nh: int, nw: int, layer: int) -> float:
    """Upstream's FLOPs (all blocks + LM head, whatever layer is read) / sail-vision's (blocks 1..layer)."""
    return (forward_flops(shape, nh, nw, shape.layers, lm_head=True)
            / forward_flops(shape, nh, nw, layer))


# ---------------------------------------------------------------------------- upstream location
def upstream_commit(upstream: Path) -> str | None:
    marker = upstream / "UPSTREAM_COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(upstream), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_upstream(upstream: Path, python: Path) -> None:
    """Raise UpstreamUnavailable with a one-line reason when the upstream side cannot run."""
    hint = "build both with scripts/upstream_env.sh"
    if not upstream.is_dir():
        raise UpstreamUnavailable(f"--upstream {upstream}: no such folder (a checkout of ByteDance-Seed/SAIL "
                                  f"or the copy scripts/upstream_env.sh extracts to {DEFAULT_UPSTREAM}); {hint}")
    if not (upstream / "modeling_sail.py").is_file():
        raise UpstreamUnavailable(f"--upstream {upstream}: no modeling_sail.py there (expected upstream SAIL's "
                                  f"files); {hint}")
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise UpstreamUnavailable(f"--upstream-python {python}: no such interpreter (upstream needs its own "
                                  f"environment with transformers 4.42); {hint}")


# ---------------------------------------------------------------------------- workers
class Worker:
    """A persistent ``upstream_worker.py`` process: JSON requests in, JSON replies out."""

    def __init__(self, name: str, python: Path | str, args: list[str], log_dir: Path, threads: int,
                 extra_env: dict | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}-worker.log"
        self._log = open(self.log_path, "w")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        env.update(extra_env or {})
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("HF_HUB_OFFLINE", "1")
        self.proc = subprocess.Popen([str(python), str(WORKER), *args, "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env, cwd=str(ROOT), bufsize=1)
        self.started = False

    def wait_ready(self) -> None:
        self._read()
        self.started = True

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise WorkerError(f"{self.name} worker exited (code {self.proc.returncode}):\n{self.log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise WorkerError(f"{self.name} worker: {reply.get('error')}\n{self.log_tail()}")
        return reply

    def request(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def log_tail(self, lines: int = 25) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def sail_worker(log_dir: Path, threads: int) -> Worker:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return Worker("sail", sys.executable, ["--side", "sail"], log_dir, threads, {"PYTHONPATH": path})


def upstream_worker(upstream: Path, python: Path, log_dir: Path, threads: int) -> Worker:
    return Worker("upstream", python, ["--side", "upstream", "--upstream", str(upstream)], log_dir, threads)


# ---------------------------------------------------------------------------- inputs and checks
def make_images(px: int, batch: int, seed: int) -> list:
    """Smooth random RGB images (uint8, px x px): gradients plus noise, like photos more than noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px] / px
    images = []
    for _ in range(batch):
        base = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx + rng.uniform(0.5, 3) * yy + rng.uniform()))
                         for _ in range(3)], axis=-1)
        pixels = 127.5 * (base + 1) + rng.normal(0, 20, (px, px, 3))
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def build_inputs(checkpoint: Path, px: int, batch: int, seed: int) -> dict:
    """Identical inputs for both sides: the preprocessed patches (sail-vision's upstream-exact
    preprocessing) and, for upstream's forward, token ids, patch indices, 3-D positions, mask."""
    from sail_vision import image_to_patches
    from sail_vision.checkpoint import SailCheckpoint
    from sail_vision.positions import image_position_ids, image_token_ids

    ckpt = SailCheckpoint(checkpoint)
    p = ckpt.config.vision_patch_size
    patches = torch.stack([image_to_patches(img, p) for img in make_images(px, batch, seed)])
    nh, nw = patches.shape[1:3]
    n = nh * nw
    ids = image_token_ids(ckpt.token_ids, nh, nw).expand(batch, -1).contiguous()
    seq = ids.shape[1]
    patch_index = torch.full((batch, seq), -1, dtype=torch.long)  # -1: not a patch (upstream's convention)
    patch_index[:, 1:1 + n] = torch.arange(batch * n).view(batch, n)
    positions = image_position_ids(nh, nw)[:, None, :].expand(3, batch, seq).contiguous()
    mask = torch.ones(batch, 1, seq, seq, dtype=torch.bool)  # upstream's prefix mask: the whole image
    return {"patches": patches, "input_ids": ids, "vision_patch_indices": patch_index,
            "position_ids": positions, "attention_mask": mask}


def compare_hidden(ref: torch.Tensor, got: torch.Tensor) -> dict:
    """Max-abs difference of two hidden-state tensors, absolute and relative to max |ref|."""
    if ref.shape != got.shape:
        raise WorkerError(f"hidden-state shapes differ: upstream {tuple(ref.shape)}, sail-vision {tuple(got.shape)}")
    diff = float((ref.float() - got.float()).abs().max())
    scale = float(ref.float().abs().max())
    return {"max_abs_diff": diff, "max_abs_ref": scale, "rel_diff": diff / scale if scale else diff}


def parity_check(upstream: Worker, sail: Worker, layers: list[int], dtype: str, tmp: Path) -> dict:
    out = {}
    for k in layers:
        files = {side: tmp / f"{side}-{k}.pt" for side in ("upstream", "sail")}
        upstream.request(op="output", layer=k, file=str(files["upstream"]))
        sail.request(op="output", layer=k, file=str(files["sail"]))
        ref = torch.load(files["upstream"], weights_only=True)
        got = torch.load(files["sail"], weights_only=True)
        result = compare_hidden(ref, got)
        result["tol_rel"] = PARITY_TOL[dtype]
        result["passed"] = result["rel_diff"] <= PARITY_TOL[dtype]
        out[str(k)] = result
        for f in files.values():
            f.unlink()
    return out


def matmul_timer(tokens: int, hidden: int, dtype: torch.dtype, seed: int = 0):
    """(callable returning its own elapsed seconds, FLOPs): (tokens, hidden) @ (hidden, hidden)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(tokens, hidden, generator=gen).to(dtype)
    b = (torch.randn(hidden, hidden, generator=gen) / hidden ** 0.5).to(dtype)

    def run() -> float:
        start = time.perf_counter()
        torch.matmul(a, b)
        return time.perf_counter() - start

    return run, 2.0 * tokens * hidden * hidden


# ---------------------------------------------------------------------------- the benchmark
def cell_rows(shape: ModelShape, dtype: str, px: int, batch: int, times: dict, layers: dict,
              matmul_flops: float, parity: dict) -> list[dict]:
    nh = nw = px // shape.patch
    med = {name: median(t) for name, t in times.items()}
    matmul_rate = matmul_flops / med["matmul"]
    up_s = med["upstream"] / batch
    up_flops = forward_flops(shape, nh, nw, shape.layers, lm_head=True)
    rows = []
    for role, layer in layers.items():
        name = f"sail-{role}"
        sail_s = med[name] / batch
        sail_flops = forward_flops(shape, nh, nw, layer)
        ratio = up_s / sail_s
        # Robustness checks against load from other jobs: the median of each round's own ratio (the
        # two ran seconds apart), and the ratio of the fastest forwards (noise only adds time).
        paired = median([u / s for u, s in zip(times["upstream"], times[name])])
        best = min(times["upstream"]) / min(times[name])
        fr = up_flops / sail_flops
        target = LAST_TARGET_VS_FLOPS * fr if role == "last" else MIDDLE_TARGET
        rows.append({
            "dtype": dtype, "px": px, "batch": batch, "layer": layer,
            "layer_role": "last" if role == "last" else "middle",
            "upstream_s_per_img": up_s, "sail_s_per_img": sail_s, "speed_ratio": ratio,
            "paired_ratio": paired, "best_ratio": best, "flop_ratio": fr, "ratio_vs_flops": ratio / fr,
            "target_ratio": target, "target_met": ratio >= target,
            "upstream_gflop_per_img": up_flops / 1e9, "sail_gflop_per_img": sail_flops / 1e9,
            "upstream_gflop_s": up_flops / up_s / 1e9, "sail_gflop_s": sail_flops / sail_s / 1e9,
            "matmul_gflop_s": matmul_rate / 1e9,
            "upstream_matmul_frac": up_flops / up_s / matmul_rate,
            "sail_matmul_frac": sail_flops / sail_s / matmul_rate,
            "parity_max_abs_diff": parity[str(layer)]["max_abs_diff"],
            "parity_rel_diff": parity[str(layer)]["rel_diff"],
            "times_s": {"upstream": times["upstream"], "sail": times[name], "matmul": times["matmul"]},
        })
    return rows


def run(args) -> dict:
    upstream_dir, upstream_python = Path(args.upstream).expanduser(), Path(args.upstream_python).expanduser()
    check_upstream(upstream_dir, upstream_python)
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp_holder = tempfile.TemporaryDirectory(prefix="bench-upstream-")
    tmp = Path(tmp_holder.name)
    if args.quick:
        from sail_vision.checkpoint_generator import make_checkpoint

        checkpoint = make_checkpoint(tmp / "tiny", "tiny", seed=0)
        preset = "tiny"
    else:
        checkpoint = cached_checkpoint(Path(args.cache_dir), args.preset)
        preset = args.preset
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    shape = ModelShape.from_config(config)
    if shape.head_dim != 128:
        raise SailVisionError(f"preset {preset!r} has head_dim {shape.head_dim}; upstream's 3-D rotary "
                              f"hard-codes sections for head_dim 128")
    layers = {"last": shape.layers, "mid": shape.layers // 2}

    started = time.perf_counter()
    workers = {"upstream": upstream_worker(upstream_dir, upstream_python, tmp, args.threads),
               "sail": sail_worker(tmp, args.threads)}
    rows, parity_all, worker_info, load_s = [], {}, {}, {}
    try:
        for name, worker in workers.items():  # both start in parallel; wait for both
            worker.wait_ready()
            worker_info[name] = worker.request(op="hello")
        print(f"upstream: {upstream_dir} (commit {upstream_commit(upstream_dir) or 'unknown'}), python "
              f"{worker_info['upstream']['python']}, torch {worker_info['upstream']['torch']}, transformers "
              f"{worker_info['upstream']['transformers']}; sail-vision: torch {worker_info['sail']['torch']}, "
              f"transformers {worker_info['sail']['transformers']}; {args.threads or 'default'} thread(s)",
              flush=True)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for name, worker in workers.items():
                reply = worker.request(op="load", checkpoint=str(checkpoint), dtype=dtype_name,
                                       layers=sorted(set(layers.values())))
                load_s[f"{name}-{dtype_name}"] = reply["load_s"]
            for px in args.resolutions:
                if px % shape.patch:
                    raise SailVisionError(f"--resolutions {px}: not a multiple of the patch size {shape.patch}")
                nh = nw = px // shape.patch
                rounds = args.rounds_448 if (px >= 448 and args.rounds_448) else args.rounds
                for batch in args.batches:
                    inputs = build_inputs(Path(checkpoint), px, batch, seed=args.seed)
                    input_file = tmp / "inputs.pt"
                    torch.save(inputs, input_file)
                    for worker in workers.values():
                        worker.request(op="inputs", file=str(input_file))
                    parity = parity_check(workers["upstream"], workers["sail"],
                                          sorted(set(layers.values())), dtype_name, tmp)
                    parity_all[f"{dtype_name}-{px}-{batch}"] = parity
                    for k, result in parity.items():
                        print(f"  parity {dtype_name} {px}px batch {batch} layer {k}: max abs diff "
                              f"{result['max_abs_diff']:.3g} (relative {result['rel_diff']:.3g}, "
                              f"tol {result['tol_rel']:g})", flush=True)
                    failed = {k: r for k, r in parity.items() if not r["passed"]}
                    if failed:
                        raise SailVisionError(
                            f"parity check failed in {dtype_name} at {px} px, batch {batch}: layer(s) "
                            f"{', '.join(failed)} differ by {max(r['rel_diff'] for r in failed.values()):.3g} "
                            f"(relative max-abs) between upstream and sail-vision; not timing unequal work")
                    seq = nh * nw + 2
                    mm_run, mm_flops = matmul_timer(batch * seq, shape.hidden, dtype)
                    contenders = {
                        "upstream": lambda: workers["upstream"].request(op="time", layer=layers["last"],
                                                                        reps=1)["times"][0],
                        "sail-last": lambda: workers["sail"].request(op="time", layer=layers["last"],
                                                                     reps=1)["times"][0],
                        "sail-mid": lambda: workers["sail"].request(op="time", layer=layers["mid"],
                                                                    reps=1)["times"][0],
                        "matmul": mm_run,
                    }
                    with torch.no_grad():
                        times = alternate(contenders, rounds, warmup=args.warmup, self_timed=True)
                    cell = cell_rows(shape, dtype_name, px, batch, times, layers, mm_flops, parity)
                    rows.extend(cell)
                    med = {name: median(t) for name, t in times.items()}
                    print(f"{dtype_name} {px}px batch {batch} ({rounds} rounds): upstream "
                          f"{med['upstream'] / batch:.3g} s/img, sail last {med['sail-last'] / batch:.3g}, "
                          f"mid {med['sail-mid'] / batch:.3g}; ratio last {cell[0]['speed_ratio']:.3g} "
                          f"(flops {cell[0]['flop_ratio']:.3g}), mid {cell[1]['speed_ratio']:.3g} "
                          f"(flops {cell[1]['flop_ratio']:.3g}); matmul {mm_flops / med['matmul'] / 1e9:.3g} "
                          f"GFLOP/s  [{time.perf_counter() - started:.0f} s]", flush=True)
    except WorkerError as exc:
        raise SystemExit(f"error: {exc}")
    finally:
        for worker in workers.values():
            worker.close()
    print_table(rows, ["dtype", "px", "batch", "layer_role", "upstream_s_per_img", "sail_s_per_img", "speed_ratio",
                       "paired_ratio", "flop_ratio", "ratio_vs_flops", "target_ratio", "target_met", "upstream_matmul_frac",
                       "sail_matmul_frac", "matmul_gflop_s", "parity_max_abs_diff"],
                title=f"upstream vs sail-vision (preset {preset}, median of {args.rounds} rounds"
                      + (f", {args.rounds_448} at >= 448 px" if args.rounds_448 else "")
                      + f", {torch.get_num_threads()} thread(s); s/img)")
    tmp_holder.cleanup()
    return {
        "checkpoint": str(checkpoint), "preset": preset,
        "model": {"hidden": shape.hidden, "intermediate": shape.intermediate, "layers": shape.layers,
                  "heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
                  "vocab": shape.vocab, "patch": shape.patch},
        "layers": layers, "threads": args.threads, "rounds": args.rounds, "rounds_448": args.rounds_448,
        "warmup": args.warmup,
        "upstream": {"path": str(upstream_dir), "commit": upstream_commit(upstream_dir),
                     "python": worker_info["upstream"]["python"], "torch": worker_info["upstream"]["torch"],
                     "transformers": worker_info["upstream"]["transformers"]},
        "sail_worker": {k: worker_info["sail"][k] for k in ("python", "torch", "transformers")},
        "load_s": load_s,
        "parity": parity_all,
        "parity_passed": all(r["passed"] for cell in parity_all.values() for r in cell.values()),
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--upstream", default=str(DEFAULT_UPSTREAM),
                        help="folder with upstream SAIL's modeling_sail.py (a checkout, or the copy "
                             "scripts/upstream_env.sh extracts; env SAIL_UPSTREAM_DIR). Loaded at run time, "
                             "never copied")
    parser.add_argument("--upstream-python", default=str(DEFAULT_UPSTREAM_PYTHON),
                        help="python of the upstream environment (transformers 4.42; made by "
                             "scripts/upstream_env.sh; env SAIL_UPSTREAM_PYTHON)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny checkpoint (4 blocks x 256, patch 8), one cell: float32, 32 px, batch 2, "
                             "both layers, 2 rounds; seconds (what the test runs)")
    parser.add_argument("--preset", default="small",
                        help="checkpoint_generator preset for the full run ('small': 12 blocks x 1024, 8 heads "
                             "of 128, 2 kv heads, vocab 32000, patch 32; head_dim must be 128 for upstream)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="where the random checkpoint is written once and reused (env SAIL_BENCH_CACHE)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["bfloat16", "float32"],
                        help="dtypes (default bfloat16 float32; quick: float32)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=None,
                        help="square image sizes in px, multiples of the patch size (default 224 448; quick: 32)")
    parser.add_argument("--batches", nargs="+", type=int, default=None,
                        help="images per forward, the same for both sides (default 1 8; quick: 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed alternating rounds per cell, one forward per contender each (default 9; "
                             "quick: 2)")
    parser.add_argument("--rounds-448", type=int, default=None,
                        help="rounds for resolutions >= 448 px, to bound the run time (default 7; "
                             "0 = same as --rounds)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test images")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every process (0 = torch's default). One by default, as in "
                             "bench_throughput.py: on this shared 2-core machine two OpenMP threads wait on "
                             "barriers whenever another job holds a core")
    parser.add_argument("--out-name", default="bench_upstream", help="results/<name>[-quick].json")
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["bfloat16", "float32"])
    args.resolutions = args.resolutions or ([32] if args.quick else [224, 448])
    args.batches = args.batches or ([2] if args.quick else [1, 8])
    args.rounds = args.rounds or (2 if args.quick else 9)
    if args.rounds_448 is None:
        args.rounds_448 = 0 if args.quick else 7
    try:
        check_upstream(Path(args.upstream).expanduser(), Path(args.upstream_python).expanduser())
    except UpstreamUnavailable as exc:
        parser.exit(2, f"error: {exc}\n")
    run_and_save(parser, lambda: run(args), args.out_name, args.quick)


if __name__ == "__main__":
    main()
