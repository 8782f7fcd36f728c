"""mmseg training speed with and without `tools/train.py --amp`: steps/s, images/s, peak GPU memory, and
the frozen SAIL backbone's dtype under mixed precision.

Each run is `tools/train.py` itself (its config loading, `--amp` set-up, checks and work-dir lock, then
mmengine's Runner through `sail_vision.mmseg.launch.run`) on a SAIL segmentation config, with a few
`--cfg-options` (checkpoint, synthetic data, `train_cfg.max_iters`, no validation, no checkpoint saving)
and one extra hook. The hook times every training step (`Runner.train_step`: data preprocessing,
forward through the frozen backbone and the head, backward, optimizer step; the data loader's time is
reported apart), records peak GPU memory, and watches dtypes with forward hooks: the encoder's hidden
states (its last block used and its final norm), the dtype that block's matrix products ran in (its
attention-output and MLP-down projections), the backbone's output maps and the head's logits.
Under `--amp` the head runs in the autocast dtype while the encoder must keep `model.backbone.dtype`
(`SailEncoder` switches autocast off); the script exits 1 (after saving the JSON) if it does not.

    python benchmarks/bench_mmseg_train.py                       # CUDA: SAIL-7B-shaped checkpoint, 512 crops
    python benchmarks/bench_mmseg_train.py --configs linear      # one config only
    python benchmarks/bench_mmseg_train.py --quick               # CPU, the demo's tiny checkpoint (CI)

Full run: the 7B configs (`configs/sail/*_sail-7b_8xb2-40k_ade20k-512x512.py`: crop 512, batch 2 per GPU
as configured) on a random SAIL-7B-shaped checkpoint (32 blocks, bfloat16, ~14.5 GB, written once under
`--cache-dir`) and synthetic 512x512 images read through the configs' own ADE20K pipeline.
`--quick`: the tiny configs (`*_sail-tiny_1xb4-300_synthetic-64x64.py`) on the demo's tiny checkpoint.
mmengine's AmpOptimWrapper asserts a GPU and `tools/train.py --amp` refuses without one, so on a CPU the
mixed-precision run uses a stand-in: the same optimizer wrapper with the forward under
`torch.autocast('cpu', dtype=torch.bfloat16)` (what AmpOptimWrapper does, without the loss scaler that
bfloat16 does not need). The output says which one ran.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS_DIR, cached_checkpoint, free_disk_bytes, median, print_table,  # noqa: E402
                     write_results)

ROOT = Path(__file__).resolve().parents[1]
NAME = "bench_mmseg_train"
#: --configs name -> (full-run config, --quick config), under configs/sail/.
CONFIGS = {
    "linear": ("linear_sail-7b_8xb2-40k_ade20k-512x512.py", "linear_sail-tiny_1xb4-300_synthetic-64x64.py"),
    "linear4": ("linear4-ms_sail-7b_8xb2-40k_ade20k-512x512.py", "linear4-ms_sail-tiny_1xb4-300_synthetic-64x64.py"),
    "upernet": ("upernet_mln_sail-7b_8xb2-40k_ade20k-512x512.py", "upernet_mln_sail-tiny_1xb4-300_synthetic-64x64.py"),
}
MODES = ("plain", "amp")
#: SAIL-7B in bfloat16 (all 32 blocks, 7.2e9 weights) plus some room.
CHECKPOINT_DISK_BYTES = 16 * 10**9
HOOK_TYPE = "SailMmsegTrainBenchHook"
CPU_AMP_WRAPPER = "SailCpuBf16AutocastOptimWrapper"
CPU_AMP_KIND = ("torch.autocast('cpu', bfloat16) stand-in (mmengine's AmpOptimWrapper needs a GPU; "
                "tools/train.py --amp refuses on CPU)")
CUDA_AMP_KIND = "tools/train.py --amp (mmengine AmpOptimWrapper, dynamic loss scale)"
#: What each run's hook collected, by run key (the hook is rebuilt from the config by the Runner).
_COLLECTED: dict[str, dict] = {}


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _register_mmengine_parts() -> None:
    """The timing hook and the CPU autocast optimizer wrapper, in mmengine's root registries (mmseg's
    registries fall back to them)."""
    import torch
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.optim import OptimWrapper
    from mmengine.registry import HOOKS, OPTIM_WRAPPERS

    def sync():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    class SailMmsegTrainBenchHook(Hook):
        """Times each train step (first of all hooks before and after it) and watches dtypes."""

        priority = "HIGHEST"

        def __init__(self, key: str, warmup: int):
            self.key, self.warmup = key, warmup

        def before_train(self, runner) -> None:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            backbone = model.backbone
            encoder = backbone.encoder
            deepest = max(backbone.out_indices)
            self.data = {"step_s": [], "iter_wall_s": [], "encoder_state_dtypes": set(), "encoder_matmul_dtypes": set(),
                         "backbone_map_dtypes": set(),
                         "head_logit_dtypes": set(), "autocast_at_backbone": set(), "input_shapes": set(),
                         "losses": [], "configured_backbone_dtype": str(runner.cfg.model.backbone.get("dtype",
                                                                                                       "float32")),
                         "encoder_dtype": _dtype_name(encoder.dtype), "encoder_device": str(encoder.device),
                         "optim_wrapper": type(runner.optim_wrapper).__name__,
                         "batch_size": runner.train_dataloader.batch_size,
                         "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                         "encoder_params": sum(p.numel() for p in encoder.parameters())}
            device_type = encoder.device.type

            def before_backbone(module, args):
                pixels = _first_tensor(args)
                self.data["input_shapes"].add(tuple(pixels.shape))
                self.data["autocast_at_backbone"].add(bool(torch.is_autocast_enabled(device_type)))

            def encoder_state(module, args, output):
                self.data["encoder_state_dtypes"].add(_dtype_name(_first_tensor(output).dtype))

            def encoder_matmul(module, args, output):
                self.data["encoder_matmul_dtypes"].add(_dtype_name(_first_tensor(output).dtype))

            def backbone_maps(module, args, output):
                self.data["backbone_map_dtypes"].update(_dtype_name(t.dtype) for t in output)

            def head_logits(module, args, output):
                self.data["head_logit_dtypes"].add(_dtype_name(_first_tensor(output).dtype))

            watched = [backbone.register_forward_pre_hook(before_backbone),
                       backbone.register_forward_hook(backbone_maps),
                       # mmseg heads call their own forward directly; conv_seg (the logits) goes through __call__
                       getattr(model.decode_head, "conv_seg", model.decode_head).register_forward_hook(head_logits)]
            if deepest > 0:
                # A block's output alone could hide autocast (a float32 residual plus a bfloat16 update is
                # float32 again); its linear layers' outputs show the dtype the matrix products ran in.
                block = encoder.layers[deepest - 1]
                watched.append(block.register_forward_hook(encoder_state))
                watched += [block.self_attn.o_proj.register_forward_hook(encoder_matmul),
                            block.mlp.down_proj.register_forward_hook(encoder_matmul)]
            if deepest == encoder.num_layers or backbone.norm:
                watched.append(encoder.norm.register_forward_hook(encoder_state))
            self.handles = watched
            self.cuda = encoder.device.type == "cuda"
            if self.cuda:
                sync()
                torch.cuda.reset_peak_memory_stats()
                self.data["resident_gpu_bytes"] = torch.cuda.memory_allocated()
            self.last_start = None

        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            sync()
            now = time.perf_counter()
            if self.last_start is not None and batch_idx > self.warmup:
                self.data["iter_wall_s"].append(now - self.last_start)  # whole iteration, data loading included
            self.last_start = self.start = now

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            sync()
            seconds = time.perf_counter() - self.start
            if batch_idx >= self.warmup:
                self.data["step_s"].append(seconds)
            loss = (outputs or {}).get("loss")
            if loss is not None:
                self.data["losses"].append(float(loss.detach() if hasattr(loss, "detach") else loss))

        def after_train(self, runner) -> None:
            for handle in self.handles:
                handle.remove()
            if self.cuda:
                self.data["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            _COLLECTED[self.key] = self.data
            self.handles, self.data = [], None

    class SailCpuBf16AutocastOptimWrapper(OptimWrapper):
        """OptimWrapper with the forward under torch.autocast('cpu', bfloat16): AmpOptimWrapper's context
        without its CUDA-only loss scaler (bfloat16 keeps float32's exponent range)."""

        @contextmanager
        def optim_context(self, model):
            with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
                yield

    HOOKS.register_module(HOOK_TYPE, module=SailMmsegTrainBenchHook, force=True)
    OPTIM_WRAPPERS.register_module(CPU_AMP_WRAPPER, module=SailCpuBf16AutocastOptimWrapper, force=True)


def _train_tool():
    """tools/train.py as a module (its `_train(argv)` raises sail-vision's errors instead of exiting)."""
    spec = importlib.util.spec_from_file_location("sail_tools_train", ROOT / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _edited_config(edit):
    """Let ``edit(cfg)`` see the config tools/train.py hands to ``launch.run`` (after its own --amp set-up
    and checks), just before the Runner is built."""
    from sail_vision.mmseg import launch

    original = launch.run

    def run(cfg, method):
        edit(cfg)
        return original(cfg, method)

    launch.run = run
    try:
        yield
    finally:
        launch.run = original


class _Stop(Exception):
    pass


def amp_refusal_on_cpu(train_tool, config: Path) -> str | None:
    """tools/train.py's own answer to --amp without CUDA (None if it would have trained)."""
    from sail_vision.errors import SailVisionError

    def stop(cfg):
        raise _Stop

    try:
        with tempfile.TemporaryDirectory(prefix="sail-amp-probe-") as tmp, _edited_config(stop):
            train_tool._train([str(config), "--amp", "--work-dir", tmp])
    except SailVisionError as exc:
        return str(exc)
    except _Stop:
        return None
    return None


def train_once(train_tool, config: Path, mode: str, key: str, work_dir: Path, options: list[str], args,
               cpu_stand_in: bool) -> dict:
    """One tools/train.py run of ``config`` (``mode`` 'plain' or 'amp'); what the hook collected."""
    argv = [str(config), "--work-dir", str(work_dir)]
    if mode == "amp" and not cpu_stand_in:
        argv.append("--amp")
    argv += ["--cfg-options", *options, f"experiment_name={key}", *args.cfg_options]

    def edit(cfg):
        cfg.custom_hooks = list(cfg.get("custom_hooks") or []) + [dict(type=HOOK_TYPE, key=key, warmup=args.warmup)]
        if mode == "amp" and cpu_stand_in:
            cfg.optim_wrapper.type = CPU_AMP_WRAPPER

    started = time.perf_counter()
    with _edited_config(edit):
        train_tool._train(argv)
    data = _COLLECTED.pop(key)
    data["run_s"] = time.perf_counter() - started
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return data


def prepare(args, root: Path) -> tuple[Path, Path]:
    """(checkpoint, data root): the SAIL checkpoint (--checkpoint, else the demo's tiny one with --quick, else
    a cached random SAIL-7B-shaped one) and a synthetic dataset in ADE20K's layout (64 px / 512 px images)."""
    from sail_vision.mmseg.synthetic import make_synthetic_dataset

    if args.checkpoint:
        checkpoint = Path(args.checkpoint).expanduser()
    elif args.quick:
        from sail_vision.demo import demo_checkpoint

        checkpoint = demo_checkpoint()[0]
    else:
        if (not (Path(args.cache_dir) / "sail-7b-bfloat16-seed0" / "config.json").is_file()
                and free_disk_bytes(Path(args.cache_dir)) < CHECKPOINT_DISK_BYTES):
            from sail_vision.errors import InputError

            raise InputError(f"--cache-dir {args.cache_dir}: the SAIL-7B-shaped checkpoint needs about "
                             f"{CHECKPOINT_DISK_BYTES / 1e9:.0f} GB free there; choose another --cache-dir or "
                             f"pass --checkpoint")
        checkpoint = cached_checkpoint(Path(args.cache_dir), "sail-7b", dtype="bfloat16")
    if args.quick:
        data = make_synthetic_dataset(root / "data", num_train=8, num_val=1, size=64, cell=16)
    else:
        data = make_synthetic_dataset(root / "data", num_train=args.images, num_val=1, size=512, cell=32)
    return checkpoint, data


def _row(config: str, mode: str, rnd: int, data: dict, amp_kind: str) -> dict:
    step = median(data["step_s"])
    batch, _, height, width = max(data["input_shapes"])
    peak = data.get("peak_gpu_bytes")
    resident = data.get("resident_gpu_bytes")
    return {
        "config": config, "mode": mode, "round": rnd, "amp": amp_kind if mode == "amp" else None,
        "optim_wrapper": data["optim_wrapper"], "batch": batch, "crop": f"{height}x{width}",
        "steps_s": 1.0 / step, "images_s": batch / step, "step_ms": step * 1e3,
        "iter_wall_ms": median(data["iter_wall_s"]) * 1e3 if data["iter_wall_s"] else None,
        "peak_gpu_bytes": peak, "peak_gpu_gb": peak / 1e9 if peak is not None else None,
        "resident_gpu_gb": resident / 1e9 if resident is not None else None,
        "backbone_dtype": data["configured_backbone_dtype"], "encoder_dtype": data["encoder_dtype"],
        "encoder_state_dtypes": sorted(data["encoder_state_dtypes"]),
        "encoder_matmul_dtypes": sorted(data["encoder_matmul_dtypes"]),
        "backbone_map_dtypes": sorted(data["backbone_map_dtypes"]),
        "head_logit_dtypes": sorted(data["head_logit_dtypes"]),
        "autocast_at_backbone": sorted(data["autocast_at_backbone"]),
        "dtype_kept": ((data["encoder_state_dtypes"] | data["encoder_matmul_dtypes"])
                       == {data["configured_backbone_dtype"]}),
        "trainable_params": data["trainable_params"], "encoder_params": data["encoder_params"],
        "first_loss": data["losses"][0] if data["losses"] else None,
        "last_loss": data["losses"][-1] if data["losses"] else None,
        "run_s": data["run_s"], "step_times_s": data["step_s"], "iter_wall_times_s": data["iter_wall_s"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Per config: steps/s from the median of all rounds' step times, AMP's speed-up and memory saving."""
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        per = {}
        for mode in MODES:
            mine = [r for r in rows if r["config"] == config and r["mode"] == mode]
            step = median([t for r in mine for t in r["step_times_s"]])
            peaks = [r["peak_gpu_gb"] for r in mine if r["peak_gpu_gb"] is not None]
            per[mode] = {"steps_s": 1.0 / step, "images_s": mine[0]["batch"] / step,
                         "peak_gpu_gb": max(peaks) if peaks else None, "rows": mine}
        plain, amp = per["plain"], per["amp"]
        amp_rows = amp["rows"]
        out.append({
            "config": config, "batch": amp_rows[0]["batch"], "crop": amp_rows[0]["crop"],
            "plain_steps_s": plain["steps_s"], "amp_steps_s": amp["steps_s"],
            "amp_speedup": amp["steps_s"] / plain["steps_s"],
            "plain_images_s": plain["images_s"], "amp_images_s": amp["images_s"],
            "plain_peak_gpu_gb": plain["peak_gpu_gb"], "amp_peak_gpu_gb": amp["peak_gpu_gb"],
            "backbone_dtype": amp_rows[0]["backbone_dtype"],
            "amp_encoder_dtype": "/".join(sorted({d for r in amp_rows
                                                  for d in r["encoder_state_dtypes"] + r["encoder_matmul_dtypes"]})),
            "amp_head_dtype": "/".join(sorted({d for r in amp_rows for d in r["head_logit_dtypes"]})),
            "dtype_kept": all(r["dtype_kept"] for r in plain["rows"] + amp_rows),
        })
    return out


def run(args) -> dict:
    import torch

    from sail_vision.errors import InputError

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InputError("no CUDA GPU here: the full run trains on a SAIL-7B-shaped checkpoint at 512x512 crops; "
                         "use --quick to check the script on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.verbose:  # mmseg / mmengine deprecation and "draw is False" notes, once per Runner
        warnings.filterwarnings("ignore", category=UserWarning, module=r"(mmengine|mmseg)(\.|$)")
    _register_mmengine_parts()
    train_tool = _train_tool()
    configs = {name: ROOT / "configs" / "sail" / CONFIGS[name][1 if args.quick else 0] for name in args.configs}
    cpu_stand_in = not cuda
    refusal = amp_refusal_on_cpu(train_tool, next(iter(configs.values()))) if cpu_stand_in else None
    amp_kind = CPU_AMP_KIND if cpu_stand_in else CUDA_AMP_KIND
    if cpu_stand_in:
        print(f"AMP on CPU: {amp_kind}.\n  tools/train.py --amp said: {refusal}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sail-bench-mmseg-") as tmp:
        root = Path(args.work_dir) if args.work_dir else Path(tmp)
        checkpoint, data_root = prepare(args, root)
        options = [f"model.backbone.checkpoint={checkpoint}", f"train_dataloader.dataset.data_root={data_root}",
                   f"train_cfg.max_iters={args.warmup + args.iters}",
                   "val_cfg=None", "val_dataloader=None", "val_evaluator=None",
                   "default_hooks.checkpoint.save_last=False",
                   f"default_hooks.checkpoint.interval={args.warmup + args.iters + 1}"]
        if not args.verbose:
            options.append("log_level=ERROR")
        rows = []
        for rnd in range(args.rounds):
            for name in configs:
                for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                    key = f"{NAME}-{name}-{mode}-r{rnd}-{os.getpid()}"
                    data = train_once(train_tool, configs[name], mode, key, root / "work" / key, options, args,
                                      cpu_stand_in)
                    rows.append(_row(name, mode, rnd, data, amp_kind))
                    r = rows[-1]
                    print(f"{name:8s} {mode:5s} round {rnd}: {r['steps_s']:.3g} steps/s, encoder states "
                          f"{'/'.join(r['encoder_state_dtypes'])} (matmuls {'/'.join(r['encoder_matmul_dtypes'])}), "
                          f"head {'/'.join(r['head_logit_dtypes'])}, "
                          f"{r['run_s']:.1f} s", flush=True)
    device = "cuda:0" if cuda else "cpu"
    weights = (f"checkpoint {checkpoint}" if args.checkpoint
               else f"{'tiny' if args.quick else 'SAIL-7B-shaped'} random checkpoint")
    title = f"mmseg training, {weights} (frozen), on {device}; amp = {amp_kind}"
    print_table(rows, ["config", "mode", "round", "optim_wrapper", "batch", "crop", "steps_s", "images_s", "step_ms",
                       "iter_wall_ms", "resident_gpu_gb", "peak_gpu_gb", "backbone_dtype", "encoder_state_dtypes", "encoder_matmul_dtypes",
                       "head_logit_dtypes",
                       "dtype_kept"], title=title)
    summary = summarise(rows)
    print_table(summary, ["config", "batch", "crop", "plain_steps_s", "amp_steps_s", "amp_speedup", "plain_images_s",
                          "amp_images_s", "plain_peak_gpu_gb", "amp_peak_gpu_gb", "backbone_dtype",
                          "amp_encoder_dtype", "amp_head_dtype", "dtype_kept"],
                title=f"per config: median over {args.iters} timed steps x {args.rounds} round(s) after "
                      f"{args.warmup} warm-up steps")
    return {
        "device": device, "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "amp_kind": amp_kind, "amp_cpu_stand_in": cpu_stand_in, "train_py_amp_refusal": refusal,
        "checkpoint_preset": None if args.checkpoint else ("tiny" if args.quick else "sail-7b"),
        "checkpoint": str(checkpoint),
        "configs": {name: str(path.relative_to(ROOT)) for name, path in configs.items()},
        "warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "cfg_options": args.cfg_options,
        "rows": rows, "summary": summary, "all_dtypes_kept": all(s["dtype_kept"] for s in summary),
    }


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None ones (those options state their --quick-dependent default in words)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_HelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the tiny configs and the demo's tiny checkpoint, a few steps, on CPU (checks the script)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to train (default: cuda; cpu with --quick). --device cpu hides the GPUs "
                             "(CUDA_VISIBLE_DEVICES='') so the Runner and the backbone stay on the CPU")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configs/sail/ configs to train (7B ones, tiny ones with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5; 2 with --quick)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 30; 4 with --quick)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each (config, mode), plain and amp alternating, order reversed every other round")
    parser.add_argument("--images", type=int, default=32, help="synthetic 512x512 training images (full run)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (0: torch's default; default: 1 with --quick, as the other CPU "
                             "benchmarks: 2 OpenMP threads on a shared 2-core machine wait on barriers, else 0)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="extra tools/train.py --cfg-options for every run (plain and amp), e.g. "
                             "train_dataloader.batch_size=4 model.backbone.attn_implementation=eager")
    parser.add_argument("--checkpoint", default=None,
                        help="train on this SAIL checkpoint folder instead (e.g. the real SAIL-7B-PT weights)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sail-bench-cache"),
                        help="where the SAIL-7B-shaped checkpoint is written once and reused (full run)")
    parser.add_argument("--work-dir", default=None,
                        help="keep the runs' work dirs and the synthetic data here (default: a temporary folder)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where the JSON goes")
    parser.add_argument("--verbose", action="store_true", help="keep mmengine's INFO logs")
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.quick else "cuda")
    if args.warmup is None:
        args.warmup = 2 if args.quick else 5
    if args.iters is None:
        args.iters = 4 if args.quick else 30
    if args.threads is None:
        args.threads = 1 if args.quick else 0
    if args.warmup < 1 or args.iters < 1 or args.rounds < 1:
        parser.exit(2, "error: --warmup, --iters and --rounds must be at least 1\n")
    if args.device == "cpu" and not args.quick:
        parser.exit(2, "error: the full run needs a CUDA GPU (SAIL-7B shapes, 512x512 crops); use --quick on a CPU\n")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: mmengine's Runner would pick a GPU
    from sail_vision.errors import SailVisionError

    try:
        payload = run(args)
    except SailVisionError as exc:
        parser.exit(2, f"error: {exc}\n")
    path = write_results(NAME, payload, args.quick, Path(args.results_dir))
    print(f"saved {path}")
    if not payload["all_dtypes_kept"]:
        print("FAILED: under AMP the frozen backbone did not keep model.backbone.dtype (see dtype_kept, "
              "encoder_state_dtypes and encoder_matmul_dtypes in the JSON)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
