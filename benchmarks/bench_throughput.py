"""Throughput and compute efficiency: sail-vision against upstream's way of running SAIL.

For each dtype (bfloat16, float32), resolution (224, 448 px) and batch size (1, 8), four
contenders are timed in one alternating loop on the same random checkpoint (preset 'small':
hidden 1024, 8 heads of 128, 2 kv heads, 12 blocks, intermediate 2816, vocab 32000, patch 32):

* ``baseline`` - what upstream's example does, written here in plain transformers: a full
  ``MistralForCausalLM`` (LM head, all hidden states, KV cache) with the checkpoint's weights, the
  ``vis_embed`` linear added at the ``<vpatch>`` positions, SAIL's 3-D rotary and upstream's
  prefix mask, one image at a time;
* ``sail-last`` / ``sail-mid`` - ``SailEncoder.encode_patches`` on the whole batch, keeping the
  last layer / the middle layer;
* ``matmul`` - only the matrix products of sail-vision's forward (every linear layer and both
  attention products, same dtype and shapes, the checkpoint's own weights) with ``torch.matmul``:
  the rate this machine reaches for exactly that work.

Efficiency = (analytic FLOPs per image x images/s) / matmul rate. Before timing, the baseline's
hidden states are checked against sail-vision's.

    python benchmarks/bench_throughput.py              # full table (several minutes on 2 cores)
    python benchmarks/bench_throughput.py --quick      # tiny checkpoint and images, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_CACHE_DIR, alternate, cached_checkpoint, median, print_table,  # noqa: E402
                     run_and_save)

# Hidden-state agreement required between the baseline and sail-vision (max-abs / max |value|).
SANITY_TOL = {torch.float32: 1e-4, torch.bfloat16: 0.05}


# ---------------------------------------------------------------------------- the naive baseline
class Sail3DRotary(torch.nn.Module):
    """SAIL's rotary for (3, B, seq) position ids: frequency pairs 0-31 turn with h, 32-63 with w."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, x, position_ids):
        half = self.head_dim // 2
        inv_freq = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        axis = torch.where(torch.arange(half) < half // 2, 1, 2)  # h for the first half, w after
        pos = position_ids.float()[axis]  # (half, B, seq)
        freqs = pos.permute(1, 2, 0) * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class UpstreamStyleBaseline:
    """SAIL run the way upstream's example does it: the whole causal LM, per image."""

    def __init__(self, checkpoint: Path, dtype: torch.dtype):
        from safetensors.torch import load_file
        from transformers import MistralConfig, MistralForCausalLM

        from sail_vision.checkpoint import SailCheckpoint

        ckpt = SailCheckpoint(checkpoint)
        raw = json.loads((Path(checkpoint) / "config.json").read_text())
        config = MistralConfig(**{k: v for k, v in raw.items() if k != "sail_vision_generator"})
        config._attn_implementation = "sdpa"
        self.model = MistralForCausalLM(config).to(dtype).eval()
        state = {}
        for file in sorted(set(ckpt.weight_map.values())):
            state.update(load_file(str(file)))
        self.vis_embed = torch.nn.Linear(raw["vision_patch_size"] ** 2 * 3, config.hidden_size, bias=False)
        self.vis_embed.weight.data = state.pop("model.vis_embed.weight").to(dtype)
        self.model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
        self.model.model.rotary_emb = Sail3DRotary(config.head_dim, raw.get("rope_theta", 10000.0))
        self.ids = ckpt.token_ids
        self.dtype = dtype

    def inputs(self, patches: torch.Tensor):
        """input ids, prefix mask, 3-D position ids, vpatch index for one image (nh, nw, 3, p, p)."""
        nh, nw = patches.shape[:2]
        ids = torch.tensor([[self.ids.begin] + [self.ids.patch] * (nh * nw) + [self.ids.end]])
        seq = ids.shape[1]
        mask = torch.ones(1, 1, seq, seq, dtype=torch.bool)  # the image prefix covers the whole sequence
        hh, ww = torch.meshgrid(torch.arange(nh), torch.arange(nw), indexing="ij")
        grid = torch.stack([torch.zeros(nh * nw, dtype=torch.long), hh.flatten(), ww.flatten()]) + 1
        tail = grid.max() + 1
        position_ids = torch.cat([torch.zeros(3, 1, dtype=torch.long), grid,
                                  torch.full((3, 1), int(tail))], dim=1)[:, None, :]
        return ids, mask, position_ids, ids[0] == self.ids.patch

    @torch.no_grad()
    def forward(self, patches: torch.Tensor):
        """All hidden states (tuple, index 0 = embeddings) and logits of one image."""
        ids, mask, position_ids, is_patch = self.inputs(patches)
        embeds = self.model.model.embed_tokens(ids)
        flat = patches.reshape(patches.shape[0] * patches.shape[1], -1).to(self.dtype)
        embeds[0, is_patch] += self.vis_embed(flat)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                         use_cache=True, output_hidden_states=True)
        return out.hidden_states, out.logits

    def run(self, batch: torch.Tensor, layer: int):
        return [self.forward(image)[0][layer] for image in batch]


# ---------------------------------------------------------------------------- FLOPs and matmul rate
def sail_flops_per_image(cfg, nh: int, nw: int, blocks: int, lm_head: bool = False) -> float:
    """Analytic multiply-add FLOPs (x2) of the matrix products for one image up to ``blocks``."""
    n = nh * nw
    seq = n + 2
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_block = (2 * seq * d * (q + 2 * kv) + 2 * seq * q * d + 2 * 2 * seq * seq * q + 2 * seq * 3 * d * f)
    total = 2 * n * cfg.patch_dim * d + blocks * per_block
    if lm_head:
        total += 2 * seq * d * cfg.vocab_size
    return float(total)


def matmul_workload(encoder, batch: int, nh: int, nw: int):
    """A callable doing sail-vision's matrix products (all blocks) with torch.matmul, and their FLOPs."""
    cfg, dtype = encoder.config, encoder.dtype
    seq = nh * nw + 2
    rows = batch * seq
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    x, act, attn_out = rand(rows, cfg.hidden_size), rand(rows, cfg.intermediate_size), rand(rows, heads * hd)
    patches = rand(batch * nh * nw, cfg.patch_dim)
    q, k = rand(batch, heads, seq, hd), rand(batch, heads, hd, seq)
    probs = rand(batch, heads, seq, seq)
    weights = []
    for layer in encoder.layers:
        a, m = layer.self_attn, layer.mlp
        weights.append([(x, a.q_proj.weight.t()), (x, a.k_proj.weight.t()), (x, a.v_proj.weight.t()),
                        (attn_out, a.o_proj.weight.t()), (x, m.gate_proj.weight.t()), (x, m.up_proj.weight.t()),
                        (act, m.down_proj.weight.t()), (q, k), (probs, q)])
    pairs = [(patches, encoder.vis_embed.weight.t())] + [p for block in weights for p in block]
    flops = 0.0
    for a_, b_ in pairs:
        flops += 2.0 * a_.numel() * b_.shape[-1]

    def run():
        for a_, b_ in pairs:
            torch.matmul(a_, b_)

    return run, flops


# ---------------------------------------------------------------------------- the benchmark
def sanity_check(encoder, baseline, patches: torch.Tensor, layers: list[int]) -> dict:
    """Max-abs difference (relative to the largest value) between baseline and sail-vision."""
    ours = encoder.encode_patches(patches[:1], layers)
    hidden, _ = baseline.forward(patches[0])
    out = {}
    for k in layers:
        ref = hidden[k][0].float()
        got = ours.hidden_states[k][0].float()
        rel = float((ref - got).abs().max() / ref.abs().max())
        tol = SANITY_TOL[encoder.dtype]
        if not rel <= tol:
            raise SystemExit(f"sanity check failed: layer {k} differs by {rel:.3g} (relative max-abs) "
                             f"between the baseline and sail-vision in {encoder.dtype}; tolerance {tol}")
        out[str(k)] = rel
    return out


def run(args) -> dict:
    from sail_vision import SailEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        from sail_vision.checkpoint_generator import make_checkpoint

        checkpoint = make_checkpoint(Path(tmp.name) / "tiny", "tiny", seed=0)
    else:
        checkpoint = cached_checkpoint(Path(args.cache_dir), args.preset)
    rows = []
    sanity = {}
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        encoder = SailEncoder.from_pretrained(checkpoint, dtype=dtype)
        baseline = UpstreamStyleBaseline(checkpoint, dtype)
        cfg = encoder.config
        p = cfg.vision_patch_size
        last, mid = cfg.num_hidden_layers, cfg.num_hidden_layers // 2
        gen = torch.Generator().manual_seed(1)
        for res in args.resolutions:
            nh = nw = res // p
            for batch in args.batches:
                patches = torch.randn(batch, nh, nw, 3, p, p, generator=gen)
                if res == args.resolutions[0] and batch == args.batches[0]:
                    sanity[dtype_name] = sanity_check(encoder, baseline, patches, [mid, last])
                matmul_run, matmul_flops = matmul_workload(encoder, batch, nh, nw)
                contenders = {
                    "baseline": lambda: baseline.run(patches, last),
                    "sail-last": lambda: encoder.encode_patches(patches, [last]),
                    "sail-mid": lambda: encoder.encode_patches(patches, [mid]),
                    "matmul": matmul_run,
                }
                with torch.no_grad():
                    times = alternate(contenders, args.repeats, warmup=1)
                med = {name: median(t) for name, t in times.items()}
                matmul_rate = matmul_flops / med["matmul"]
                base_ips = batch / med["baseline"]
                base_flops = sail_flops_per_image(cfg, nh, nw, last, lm_head=True)
                for name, layer in (("sail-last", last), ("sail-mid", mid)):
                    ips = batch / med[name]
                    flops = sail_flops_per_image(cfg, nh, nw, layer)
                    rows.append({
                        "dtype": dtype_name, "px": res, "batch": batch, "layer": layer,
                        "layer_role": "last" if layer == last else "middle",
                        "sail_img_s": ips, "baseline_img_s": base_ips, "speedup": ips / base_ips,
                        "gflop_per_img": flops / 1e9, "sail_gflop_s": flops * ips / 1e9,
                        "matmul_gflop_s": matmul_rate / 1e9, "efficiency": flops * ips / matmul_rate,
                        "baseline_gflop_per_img": base_flops / 1e9, "flop_ratio": base_flops / flops,
                        "baseline_efficiency": base_flops * base_ips / matmul_rate,
                        "times_s": {"sail": times[name], "baseline": times["baseline"],
                                    "matmul": times["matmul"]},
                    })
                print(f"{dtype_name} {res}px batch {batch}: baseline {base_ips:.3g} img/s, "
                      f"last {batch / med['sail-last']:.3g}, mid {batch / med['sail-mid']:.3g}, "
                      f"matmul {matmul_rate / 1e9:.3g} GFLOP/s", flush=True)
        del encoder, baseline
    targets = {"bfloat16": {"last": 2.0, "middle": 3.5}, "float32": {"last": 1.3, "middle": 2.2}}
    for row in rows:
        target = targets.get(row["dtype"], {}).get(row["layer_role"])
        row["speedup_target"] = target
        row["speedup_met"] = None if target is None else row["speedup"] >= target
        if row["px"] == 448 and row["batch"] == 8:
            row["efficiency_target"] = 0.5
            row["efficiency_met"] = row["efficiency"] >= 0.5
    print_table(rows, ["dtype", "px", "batch", "layer_role", "baseline_img_s", "sail_img_s", "speedup",
                       "speedup_target", "flop_ratio", "sail_gflop_s", "matmul_gflop_s", "efficiency",
                       "baseline_efficiency"],
                title=f"throughput (median of {args.repeats}, images/s, {torch.get_num_threads()} thread(s))")
    return {"checkpoint": str(checkpoint), "preset": "tiny" if args.quick else args.preset,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats, "sanity_rel_maxabs": sanity, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny checkpoint (patch 8), 32 px, batch 1/2, 2 repeats: seconds, for CI")
    parser.add_argument("--preset", default="small", help="checkpoint_generator preset for the full run")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="where the random checkpoint is written once and reused (env SAIL_BENCH_CACHE)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    parser.add_argument("--resolutions", nargs="+", type=int, default=None,
                        help="square image sizes in px (default 224 448; quick: 32)")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default 1 8; quick: 1 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per contender (default 5; quick: 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0 = torch's default). One by default: other jobs share this "
                             "machine's 2 cores, and with 2 OpenMP threads under contention every small op "
                             "waits on a barrier (measured ~20x slower), which swamps what is compared")
    parser.add_argument("--out-name", default="bench_throughput", help="results/<name>[-quick].json")
    args = parser.parse_args(argv)
    args.resolutions = args.resolutions or ([32] if args.quick else [224, 448])
    args.batches = args.batches or ([1, 2] if args.quick else [1, 8])
    args.repeats = args.repeats or (2 if args.quick else 5)
    run_and_save(parser, lambda: run(args), args.out_name, args.quick)


if __name__ == "__main__":
    main()
