"""Named probe protocols (``--protocol NAME``): every hyper-parameter pinned as the reference code sets it.

Each :class:`Protocol` holds the values it pins (as ``sail-vision probe`` option names), where each value
comes from (file, line and commit of the reference repository), and what this runner cannot reproduce
(``not_reproduced``: recorded in summary.json, never silently dropped). A flag the user sets to another
value than the protocol's is an error naming both. References:

- facebookresearch/dinov2 at commit b8931f7 (``dinov2/eval/linear.py``, ``dinov2/eval/knn.py``,
  ``dinov2/eval/segmentation/models/decode_heads/linear_head.py``, ``notebooks/semantic_segmentation.ipynb``);
- apple/ml-aim at commit bd9e068 (``aim-v1/aim/v1/torch/layers.py``, ``aim-v1/aim/v1/torch/models.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import ProbeDataError

DINOV2 = "facebookresearch/dinov2@b8931f7"
AIM = "apple/ml-aim@bd9e068"
#: dinov2/eval/linear.py:145 (before scale_lr).
DINOV2_LINEAR_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
#: dinov2/eval/linear.py:140.
DINOV2_LINEAR_BATCH = 128


def scale_lr(lr: float, batch_size: int, world_size: int = 1) -> float:
    """DINOv2's ``scale_lr`` (dinov2/eval/linear.py:231-232): lr x batch x GPUs / 256."""
    return lr * batch_size * world_size / 256.0


@dataclass(frozen=True)
class Protocol:
    name: str
    task: str
    method: str
    #: option destination -> value (what ``sail-vision probe`` receives).
    values: Mapping
    #: option destination -> where the value comes from.
    sources: Mapping
    #: feature inputs the protocol probes, described (resolved against the stored names by the CLI).
    features: str
    not_reproduced: Sequence[str] = field(default_factory=tuple)

    def record(self) -> dict:
        return {"name": self.name, "task": self.task, "method": self.method, "values": dict(self.values),
                "sources": dict(self.sources), "features": self.features,
                "not_reproduced": list(self.not_reproduced)}


PROTOCOLS = {p.name: p for p in (
    Protocol("dinov2-linear", "classification", "linear",
             {"lrs": [scale_lr(lr, DINOV2_LINEAR_BATCH) for lr in DINOV2_LINEAR_LRS], "weight_decays": [0.0],
              "optimizer": "sgd", "epochs": 10, "batch_size": DINOV2_LINEAR_BATCH, "standardize": False},
             {"lrs": f"{DINOV2} dinov2/eval/linear.py:145 learning_rates, scaled by scale_lr (:231-232, "
                     f"lr x 128 x 1 GPU / 256)",
              "weight_decays": f"{DINOV2} dinov2/eval/linear.py:517 SGD(weight_decay=0)",
              "optimizer": f"{DINOV2} dinov2/eval/linear.py:517 SGD(momentum=0.9); cosine to 0 :519",
              "epochs": f"{DINOV2} dinov2/eval/linear.py:139", "batch_size": f"{DINOV2} dinov2/eval/linear.py:140",
              "standardize": f"{DINOV2} dinov2/eval/linear.py:171-183 create_linear_input (raw features)",
              "features": f"{DINOV2} dinov2/eval/linear.py:503 n_last_blocks_list=[1, 4], :239 avgpool False/True"},
             "class token of the last 1 and 4 layers, each with and without the last layer's patch mean "
             "(4 inputs; SAIL has no class token: the end token stands in)",
             ("epoch_length=1250 iterations per 'epoch' (linear.py:142): this runner's epoch is a pass over the "
              "features", "selection on a held-out part of train, not on val as linear.py does",
              "training-time augmentation (RandomResizedCrop, flip) through the backbone: features are cached",
              "learning rates scaled for 1 GPU; DINOv2's multi-GPU runs scale by their GPU count")),
    Protocol("dinov2-knn", "classification", "knn",
             {"ks": [10, 20, 100, 200], "temperature": 0.07},
             {"ks": f"{DINOV2} dinov2/eval/knn.py:90 nb_knn", "temperature": f"{DINOV2} dinov2/eval/knn.py:91",
              "features": f"{DINOV2} dinov2/eval/knn.py (the model's output: the normalised class token)"},
             "the last layer's class token (SAIL: its end token), compared by cosine similarity",
             ("selection of k on a held-out part of train; knn.py reports every k on val",)),
    Protocol("dinov2-ade20k-linear", "segmentation", "linear",
             {"bn": "batch", "optimizer": "adamw", "lrs": [1e-3], "weight_decays": [1e-4]},
             {"bn": f"{DINOV2} dinov2/eval/segmentation/models/decode_heads/linear_head.py:15-38 BNHead "
                    f"(SyncBN then a 1x1 conv, trained)",
              "optimizer": "configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py (AdamW), this project's copy of "
                           "the config DINOv2 downloads (notebooks/semantic_segmentation.ipynb: "
                           "dl.fbaipublicfiles.com/dinov2/<model>/<model>_ade20k_linear_config.py, not in the "
                           "repository)",
              "lrs": "configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py lr=1e-3 (see optimizer)",
              "weight_decays": "configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py weight_decay=1e-4",
              "features": f"{DINOV2} notebooks/semantic_segmentation.ipynb HEAD_TYPE 'linear': the last layer"},
             "the last layer's patch tokens",
             ("40k iterations of 16 images with linear warm-up (1500) and polynomial decay: this runner trains "
              "--epochs passes with a cosine schedule", "training-time augmentation (resize 0.5-2, 512 crop, flip, "
              "photometric distortion) through the backbone: only what `extract --views` cached",
              "sliding-window inference at 512 px: the probe scores the cached patch grid")),
    Protocol("dinov2-ade20k-linear-ms", "segmentation", "linear",
             {"bn": "batch", "optimizer": "adamw", "lrs": [1e-3], "weight_decays": [1e-4]},
             {"bn": f"{DINOV2} dinov2/eval/segmentation/models/decode_heads/linear_head.py:15-38 BNHead",
              "optimizer": "configs/sail/linear4-ms_sail-7b_8xb2-40k_ade20k-512x512.py (inherits the linear config)",
              "lrs": "configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py lr=1e-3",
              "weight_decays": "configs/sail/linear_sail-7b_8xb2-40k_ade20k-512x512.py weight_decay=1e-4",
              "features": f"{DINOV2} notebooks/semantic_segmentation.ipynb HEAD_TYPE 'ms' (4 layers); "
                          f"configs/sail/linear4-ms_sail-7b_8xb2-40k_ade20k-512x512.py out_indices (8, 16, 24, -1)"},
             "four layers' patch tokens concatenated (8, 16, 24 and the last of SAIL-7B)",
             ("multi-scale (x0.5 .. x1.75) + flip test-time augmentation: run tools/test.py --tta with the "
              "exported head", "40k iterations with warm-up and polynomial decay (see dinov2-ade20k-linear)",
              "training-time augmentation through the backbone")),
    Protocol("aim-attentive", "classification", "attentive",
             {"attention_heads": 32, "queries": 1},
             {"attention_heads": f"{AIM} aim-v1/aim/v1/torch/models.py:161-167 num_heads = the backbone's (SAIL-7B "
                                  f"has 32 attention heads)",
              "queries": f"{AIM} aim-v1/aim/v1/torch/models.py:166 num_queries=1",
              "head": f"{AIM} aim-v1/aim/v1/torch/layers.py AttentionPoolingClassifier (BatchNorm1d affine=False "
                      f"eps=1e-6, qkv_bias=False, linear_bias=False, average_pool=True)"},
             "the last layer's patch tokens",
             ("training recipe (optimiser, schedule, epochs, grid): not in the repository, which ships the "
              "head and evaluation only (main_attnprobe.py); this runner's attentive defaults are used",
              "training-time augmentation through the backbone")),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProbeDataError(f"--protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def apply_protocol(protocol: Protocol, args, defaults: Mapping, option_names: Mapping[str, str]) -> None:
    """Set ``args``' values to the protocol's; a value the user set (differing from the parser's ``defaults``)
    that contradicts the protocol is an error naming both."""
    if getattr(args, "task", protocol.task) != protocol.task:
        raise ProbeDataError(f"--protocol {protocol.name} is a {protocol.task} protocol; it contradicts --task "
                             f"{args.task}")
    checks = {"method": protocol.method, **protocol.values}
    for key, value in checks.items():
        given = getattr(args, key)
        user_set = given is not None and given != defaults.get(key)
        if user_set and _normal(given) != _normal(value):
            raise ProbeDataError(f"{option_names.get(key, '--' + key.replace('_', '-'))} {_show(given)} contradicts "
                                 f"--protocol {protocol.name}, which sets {_show(value)}; drop the option or the "
                                 f"protocol")
        setattr(args, key, list(value) if isinstance(value, (list, tuple)) else value)


def _normal(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
        if isinstance(value, (list, tuple)) else str(value)


def protocol_inputs(protocol: Protocol, available: Sequence[str]) -> list:
    """The feature inputs ``protocol`` probes, built from the stored feature names (one-line error if missing)."""
    from .inputs import FeatureInput, concat_last_layers, parse_feature_name

    def layers(pool: str) -> list[int]:
        return sorted({layer for layer, p in map(parse_feature_name, available) if p == pool and layer is not None})

    token = "cls" if layers("cls") else "end"
    if protocol.name == "dinov2-linear":
        inputs = []
        for n in (1, 4):
            with_mean = concat_last_layers(available, n, token)
            inputs += [FeatureInput(with_mean.parts[:-1]), with_mean]
        return inputs
    pool = token if protocol.method == "knn" else "patch"
    found = layers(pool)
    if not found:
        raise ProbeDataError(f"--protocol {protocol.name} reads layer-K_{pool} features; none is stored "
                             f"(found {', '.join(available) or 'none'})")
    if protocol.name == "dinov2-ade20k-linear-ms":
        wanted = [8, 16, 24, found[-1]]
        missing = [k for k in wanted if k not in found]
        if missing:
            raise ProbeDataError(f"--protocol {protocol.name} reads layers 8, 16, 24 and the last; layer-K_patch "
                                 f"missing for K = {', '.join(map(str, missing))}")
        return [FeatureInput(tuple(f"layer-{k}_patch" for k in wanted))]
    return [FeatureInput((f"layer-{found[-1]}_{pool}",))]
