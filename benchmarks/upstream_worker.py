"""One side of ``bench_upstream.py``: a persistent process that loads a model once and answers
timing requests, so that the driver can alternate two environments within one run.

    <python> upstream_worker.py --side upstream --upstream PATH   # upstream's modeling_sail.py
    <python> upstream_worker.py --side sail                       # sail_vision.SailEncoder

It is started by ``bench_upstream.py`` (not meant to be run by hand). The upstream side runs in
the environment made by ``scripts/upstream_env.sh`` (transformers 4.42) and never imports
sail_vision; the sail side runs in sail-vision's own environment.

Protocol: one JSON object per line on stdin, one JSON reply per line on the original stdout
(library output is sent to stderr). Every reply has ``ok``; a failure has ``error`` too.

``{"op": "hello"}``
    versions and threads.
``{"op": "load", "checkpoint": DIR, "dtype": "bfloat16", "layers": [6, 12]}``
    upstream: ``SailForCausalLM.from_pretrained`` (the full model; ``layers`` is ignored);
    sail: one ``SailEncoder.from_pretrained(..., max_layer=k)`` per k. Replaces what was loaded.
``{"op": "inputs", "file": PT}``
    a ``torch.save``-d dict written by the driver: ``patches`` (B, nh, nw, 3, p, p) float32 and,
    for upstream, ``input_ids`` (B, S), ``vision_patch_indices`` (B, S), ``position_ids`` (3, B, S)
    and ``attention_mask`` (B, 1, S, S) bool.
``{"op": "time", "layer": k, "reps": n}``
    n timed forwards producing hidden state k; replies ``times`` (seconds, one per forward).
``{"op": "output", "layer": k, "file": PT}``
    one forward; saves hidden state k (B, S, D) as float32 to ``file``.
``{"op": "quit"}``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback


class UpstreamSide:
    """Upstream's ``SailForCausalLM`` run the way its example runs the image prefix: the whole
    causal LM (all blocks, final norm, LM head), ``vision_patches`` + ``vision_patch_indices``,
    3-D position ids and the 4-D boolean prefix mask, which over an image-only sequence is all
    True (bidirectional), with ``output_hidden_states=True``."""

    def __init__(self, upstream: str):
        sys.path.insert(0, os.path.abspath(upstream))
        import modeling_sail  # upstream's file, loaded at run time from --upstream

        self.modeling = modeling_sail
        self.model = None
        self.inputs = None

    def load(self, checkpoint: str, dtype, layers) -> None:
        self.model = None
        # As upstream's get_transformer_and_tokenizer, in the dtype asked for.
        model = self.modeling.SailForCausalLM.from_pretrained(
            checkpoint, torch_dtype=dtype, use_cache=False, attn_implementation="sdpa")
        self.model = model.eval()
        self.dtype = dtype
        self.checkpoint = checkpoint

    def vision_token_ids(self) -> dict:
        """The vision tokens' ids as upstream reads them (its tokenizer), for a cross-check."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.checkpoint)
        return {name: tok.convert_tokens_to_ids(name) for name in ("<vision>", "<vpatch>", "</vision>")}

    def set_inputs(self, data: dict) -> dict:
        ids = self.vision_token_ids()
        input_ids = data["input_ids"]
        checks = {"<vision>": input_ids[:, 0], "</vision>": input_ids[:, -1],
                  "<vpatch>": input_ids[:, 1:-1].flatten()}
        for name, got in checks.items():
            if not bool((got == ids[name]).all()):
                raise ValueError(f"input ids disagree with upstream's tokenizer for {name}: "
                                 f"{sorted(set(got.tolist()))} vs {ids[name]}")
        self.inputs = data
        return {"vision_token_ids": ids}

    def forward(self, layer: int):
        import torch

        d = self.inputs
        patches = d["patches"]
        with torch.no_grad():
            out = self.model(
                input_ids=d["input_ids"],
                attention_mask=d["attention_mask"],
                vision_patch_indices=d["vision_patch_indices"],
                vision_patches=patches.reshape(-1, patches[0, 0, 0].numel()).to(self.dtype),
                position_ids=d["position_ids"],
                use_cache=False,
                output_hidden_states=True,
                return_dict=True,
            )
        return out.hidden_states[layer]


class SailSide:
    """sail-vision's encoder, built only up to each benchmarked layer (``max_layer=k``)."""

    def __init__(self):
        from sail_vision import SailEncoder

        self.cls = SailEncoder
        self.encoders = {}
        self.patches = None

    def load(self, checkpoint: str, dtype, layers) -> None:
        self.encoders = {}
        for k in sorted(set(layers)):
            self.encoders[k] = self.cls.from_pretrained(checkpoint, dtype=dtype, max_layer=k)

    def set_inputs(self, data: dict) -> dict:
        self.patches = data["patches"]
        return {}

    def forward(self, layer: int):
        return self.encoders[layer].encode_patches(self.patches, [layer]).hidden_states[layer]


def serve(side, reply) -> None:
    import torch

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            out: dict = {"ok": True}
            if op == "hello":
                import transformers

                out.update(python=sys.version.split()[0], torch=torch.__version__,
                           transformers=transformers.__version__, threads=torch.get_num_threads(),
                           pid=os.getpid())
            elif op == "load":
                start = time.perf_counter()
                side.load(req["checkpoint"], getattr(torch, req["dtype"]), req.get("layers", []))
                out["load_s"] = time.perf_counter() - start
            elif op == "inputs":
                data = torch.load(req["file"], weights_only=True)
                out.update(side.set_inputs(data))
            elif op == "time":
                times = []
                for _ in range(int(req["reps"])):
                    start = time.perf_counter()
                    side.forward(int(req["layer"]))
                    times.append(time.perf_counter() - start)
                out["times"] = times
            elif op == "output":
                hidden = side.forward(int(req["layer"]))
                torch.save(hidden.detach().float().contiguous(), req["file"])
                out["shape"] = list(hidden.shape)
            elif op == "quit":
                reply(out)
                return
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the driver, which prints it and stops
            traceback.print_exc(file=sys.stderr)
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        reply(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=["upstream", "sail"], required=True)
    parser.add_argument("--upstream", help="folder holding upstream's modeling_sail.py (upstream side)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)

    # Replies go to the real stdout; anything a library prints goes to stderr.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        channel.write(json.dumps(obj) + "\n")
        channel.flush()

    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.side == "upstream":
            if not args.upstream:
                raise ValueError("--upstream is required for the upstream side")
            side = UpstreamSide(args.upstream)
        else:
            side = SailSide()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "phase": "start"})
        return
    reply({"ok": True, "ready": args.side})
    serve(side, reply)


if __name__ == "__main__":
    main()
