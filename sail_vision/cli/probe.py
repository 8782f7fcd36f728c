"""``sail-vision probe``: classification probes (linear grid, logreg, k-NN) on extracted features, and
linear segmentation probes (``--task segmentation``) on cached patch features with masks."""

from __future__ import annotations

import argparse
import shlex


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None


def register(subparsers) -> None:
    from ..probes.defaults import (DEFAULT_ATTENTION_HEADS, DEFAULT_ATTENTIVE_LRS, DEFAULT_ATTENTIVE_WEIGHT_DECAYS,
                                   DEFAULT_QUERIES, DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_ROWS, DEFAULT_CS, DEFAULT_EPOCHS,
                                   DEFAULT_HOLDOUT_FRACTION, DEFAULT_KS, DEFAULT_MAX_ITER,
                                   DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_WEIGHT_DECAYS)
    from ..probes.methods import methods_help, registered_methods
    from ..probes.protocols import PROTOCOLS
    from ..probes.seg_defaults import (DEFAULT_DEPTH_LRS, DEFAULT_DEPTH_WEIGHT_DECAYS, DEFAULT_SEG_BATCH_SIZE,
                                       DEFAULT_SEG_EPOCHS, DEFAULT_SEG_LRS, DEFAULT_SEG_WEIGHT_DECAYS)

    parser = subparsers.add_parser(
        "probe", help="classification probes on extracted features (linear grid, logreg, k-NN); "
                      "--task segmentation: linear segmentation probes on patch features",
        description="Train classification probes on features from `sail-vision extract` (or plain .npy arrays). "
                    "Hyper-parameters are chosen on a seeded split held out from the training features; the "
                    "chosen point is refit on all training rows and evaluated once on the val features, whose "
                    "classes are matched to train's by name. Writes grid.jsonl, summary.json, head.safetensors + "
                    "head.json, val_predictions.npy, accuracy.png (and layers.png for a layer sweep) to --out. "
                    "With --predict, applies a saved head instead and writes predictions.csv. "
                    "--task segmentation trains DINOv2's linear segmentation head (BN + 1x1 conv) on patch "
                    "features and masks, selects by held-out mIoU, and also writes per_class.csv, "
                    "predictions.png and mmseg_head.pth (for tools/test.py); see docs/probes.md. --task depth "
                    "trains DINOv2's linear depth head on patch features and depth maps (extract --depths / "
                    "--layout nyu), selects by held-out RMSE and reports mmseg's DepthMetric; see docs/depth.md.",
        )
    parser.add_argument("--task", default="classification", choices=("classification", "segmentation", "depth"),
                        help="classification: one label per image (default); segmentation: a mask per image, "
                             "DINOv2's linear head on --features patch maps (NAME, or NAME+NAME+... to "
                             "concatenate layers), mIoU / mAcc / aAcc as mmseg's IoUMetric; depth: a depth map "
                             "per image, DINOv2's linear depth head, rmse / abs_rel / d1 ... as mmseg's DepthMetric")
    data = parser.add_argument_group("data")
    data.add_argument("--train", metavar="DIR", help="training feature folder (the --out of `sail-vision extract`)")
    data.add_argument("--val", metavar="DIR", help="evaluation feature folder (with --predict: the features to label)")
    data.add_argument("--train-features", metavar="X.npy", help="training features as an (N, D) .npy array "
                      "(instead of --train)")
    data.add_argument("--train-labels", metavar="Y.npy", help="(N,) integer labels of --train-features, or "
                      "labels replacing those stored in --train (their class names are dropped unless --classes)")
    data.add_argument("--val-features", metavar="X.npy", help="evaluation features as an (N, D) .npy array")
    data.add_argument("--val-labels", metavar="Y.npy", help="labels of --val-features, or replacing those of --val")
    data.add_argument("--classes", metavar="FILE", help="class names of integer labels that have none (--train-labels, "
                      "--val-labels, folders without names): one name per line, label i on line i; without names "
                      "on either side, train and val labels are compared as numbers")
    data.add_argument("--label-pattern", metavar="REGEX", help="derive labels and class names of feature folders "
                      "from image file names: the first group of REGEX (e.g. '^(cat|dog)')")
    data.add_argument("--features", nargs="+", metavar="NAME",
                      help="feature inputs: stored names such as layer-32_mean layer-32_end, globs over the stored "
                           "names such as 'layer-*_mean' (one input per match), or concatenations joined by '+' "
                           "(layer-31_end+layer-32_end); default: every pooled feature of --train (plain arrays: "
                           "the file stem)")
    data.add_argument("--all-layers", nargs="?", const="mean", metavar="POOL",
                      help="probe every stored layer of POOL (default when given without a value: mean), the same "
                           "as --features 'layer-*_POOL'; a run over two or more layers also draws layers.png and "
                           "names the best layer")
    data.add_argument("--concat-last", type=int, metavar="N", help="also probe DINOv2's input: the --concat-token "
                      "feature of the last N layers plus the last layer's mean of patch tokens")
    data.add_argument("--concat-token", default="end", choices=("end", "cls"),
                      help="token pooled for --concat-last (default: %(default)s)")
    method = parser.add_argument_group("method")
    method.add_argument("--method", default="linear", choices=tuple(registered_methods("classification")),
                        help=f"{methods_help('classification')}; --task segmentation: linear, DINOv2's linear "
                             f"segmentation head (default: %(default)s)")
    method.add_argument("--holdout-fraction", type=float, default=DEFAULT_HOLDOUT_FRACTION,
                        help="share of the training rows held out (seeded, stratified) to choose hyper-parameters; "
                             "unused when the grid has one point (default: %(default)s)")
    method.add_argument("--seed", type=int, default=0,
                        help="seed of the held-out split and of shuffling, 0 .. 2**32-1 (default: %(default)s)")
    method.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                        help="pin every hyper-parameter (and the feature inputs) as a reference protocol sets them; "
                             "an option contradicting it is an error; values and their sources go into "
                             "summary.json (see docs/probes.md) (default: none)")
    method.add_argument("--shots", type=int, nargs="+", metavar="K",
                        help="also train the chosen grid point on K training rows per class (several K allowed), "
                             "--seeds times each, and record few_shot (mean top-1 and its 95 %% Student-t interval "
                             "over seeds) in summary.json and few_shot.png (default: off)")
    method.add_argument("--seeds", type=int, default=5,
                        help="subsets drawn per --shots value, seeded by --seed (default: %(default)s)")
    method.add_argument("--no-refit", dest="refit", action="store_false",
                        help="keep the chosen head as trained on the non-held-out rows instead of refitting it on "
                             "all training rows (default: refit)")
    method.add_argument("--standardize", dest="standardize", action="store_true", default=None,
                        help="standardise features with training statistics (default: on for linear, off for "
                             "logreg; refused for knn)")
    method.add_argument("--no-standardize", dest="standardize", action="store_false",
                        help="do not standardise (the linear default is to standardise)")
    method.add_argument("--device", default="auto",
                        help="where the linear grid trains, k-NN compares and --predict scores: auto (cuda when "
                             "available, else cpu), cpu, cuda, cuda:N; logreg always runs on the CPU "
                             "(default: %(default)s)")
    method.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows read from the memory-mapped features (and moved to the device) at once "
                             "(default: %(default)s)")
    linear = parser.add_argument_group("linear")
    linear.add_argument("--lrs", type=_floats, default=None, metavar="LR,...",
                        help="learning rates of the grid, comma or space separated (default: 13 log-spaced "
                             f"values 1e-4 .. 1; segmentation: {','.join(f'{v:g}' for v in DEFAULT_SEG_LRS)}; "
                             f"depth: {','.join(f'{v:g}' for v in DEFAULT_DEPTH_LRS)}; "
                             f"attentive: {','.join(f'{v:g}' for v in DEFAULT_ATTENTIVE_LRS)})")
    linear.add_argument("--weight-decays", "--wds", type=_floats, default=None, metavar="WD,...",
                        help="weight decays of the grid (default: "
                             f"{','.join(f'{v:g}' for v in DEFAULT_WEIGHT_DECAYS)}; segmentation: "
                             f"{','.join(f'{v:g}' for v in DEFAULT_SEG_WEIGHT_DECAYS)}; depth: "
                             f"{','.join(f'{v:g}' for v in DEFAULT_DEPTH_WEIGHT_DECAYS)}; attentive: "
                             f"{','.join(f'{v:g}' for v in DEFAULT_ATTENTIVE_WEIGHT_DECAYS)})")
    linear.add_argument("--optimizer", default=None, choices=("sgd", "adamw"),
                        help="sgd (momentum 0.9) or adamw; cosine learning-rate schedule (default: sgd; attentive "
                             "and depth: adamw)")
    linear.add_argument("--epochs", type=int, default=None,
                        help=f"passes over the training features (default: {DEFAULT_EPOCHS}; segmentation: "
                             f"{DEFAULT_SEG_EPOCHS})")
    linear.add_argument("--batch-size", type=int, default=None,
                        help=f"rows per step (default: {DEFAULT_BATCH_SIZE}); segmentation: images per step, "
                             f"images of one size together (default: {DEFAULT_SEG_BATCH_SIZE})")
    linear.add_argument("--bn", default="fixed", choices=("fixed", "batch"),
                        help="segmentation: the BatchNorm before the 1x1 conv. fixed: eval mode with the statistics "
                             "of all train patches, only the conv trained (fast, one pass); batch: trained as mmseg "
                             "trains SAILLinearHead (DINOv2): batch statistics, trainable affine, mmseg's loss "
                             "averaging, torch's SGD/AdamW on every parameter, running statistics for evaluation "
                             "(default: %(default)s)")
    depth = parser.add_argument_group("depth")
    depth.add_argument("--n-bins", type=int, default=256,
                       help="depth: outputs of the head, depth the expectation over bins; 1 = plain regression "
                            "(default: %(default)s, DINOv2 / DINOv3)")
    depth.add_argument("--bin-spacing", default="linear", choices=("linear", "log"),
                       help="depth: spacing of the bin centres over --depth-range (default: %(default)s)")
    depth.add_argument("--normalisation", default="linear", choices=("linear", "softmax", "sigmoid"),
                       help="depth: how bin outputs become weights: linear = ReLU + 0.1 then divided by the sum "
                            "(AdaBins, DINOv2) (default: %(default)s)")
    depth.add_argument("--depth-range", type=_floats, default=[0.001, 10.0], metavar="MIN,MAX",
                       help="depth: the head's range in metres (bins and regression floor) (default: 0.001,10)")
    depth.add_argument("--eval-depth-range", type=_floats, default=[0.001, 10.0], metavar="MIN,MAX",
                       help="depth: ground truth scored when MIN < depth < MAX, as DepthMetric's min/max_depth_eval; "
                            "the NYU crop applies to 480x640 maps (default: 0.001,10, NYUv2)")
    attentive = parser.add_argument_group("attentive")
    attentive.add_argument("--attention-heads", type=int, default=DEFAULT_ATTENTION_HEADS,
                           help="attentive: heads of the cross-attention; must divide the feature width (AIM uses "
                                "the backbone's head count, 32 for SAIL-7B) (default: %(default)s)")
    attentive.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                           help="attentive: learned queries, their outputs averaged (default: %(default)s)")
    other = parser.add_argument_group("logreg and knn")
    other.add_argument("--Cs", type=_floats, default=list(DEFAULT_CS), metavar="C,...",
                       help="inverse regularisation strengths for logreg (default: 13 values 1e-6 .. 1e6)")
    other.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER,
                       help="L-BFGS iterations for logreg (default: %(default)s)")
    other.add_argument("--ks", type=_floats, default=list(DEFAULT_KS), metavar="K,...",
                       help="neighbour counts for knn, whole numbers >= 1 (default: 10,20,100,200)")
    other.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                       help="knn vote temperature T (default: %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", help="results folder (required; with --predict, where "
                        "predictions.csv, predictions.npy, scores.npy and predictions.json go)")
    output.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out (only the files "
                        "this command writes are removed)")
    output.add_argument("--predict", metavar="PROBE_DIR",
                        help="apply the head saved in PROBE_DIR to --val/--val-features instead of training: refuses "
                             "features of another checkpoint, layer, pool, preprocessing or width and NaN/Inf rows; "
                             "prints top1 when the features have labels")
    output.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                        help="with --predict: classes (and probabilities) listed per row in predictions.csv "
                             "(default: %(default)s)")
    output.add_argument("--quiet", action="store_true", help="no progress bars or table")
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions},
                        option_names={a.dest: a.option_strings[0] for a in parser._actions if a.option_strings})


def _load(folder, features_file, labels_file, label_pattern, classes, names, role, tokens=False):
    from ..errors import InputError
    from ..probes import load_arrays, load_feature_dir

    if folder and features_file:
        raise InputError(f"pass either --{role} DIR or --{role}-features X.npy, not both")
    if folder:
        return load_feature_dir(folder, names, labels=labels_file, label_pattern=label_pattern, classes=classes,
                                tokens=tokens)
    if features_file:
        if label_pattern:
            raise InputError(f"--label-pattern reads image file names, which --{role}-features arrays do not have; "
                             f"pass --{role}-labels Y.npy")
        return load_arrays(features_file, labels_file, classes=classes)
    if labels_file:
        raise InputError(f"--{role}-labels needs --{role} DIR or --{role}-features X.npy")
    return None


def _device(text: str):
    import torch

    from ..devices import resolve_device
    from ..errors import InputError

    device = resolve_device(text)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return str(device)


def _inputs(args, available):
    from ..probes.inputs import all_layer_inputs, concat_last_layers, parse_feature_inputs

    inputs = parse_feature_inputs(args.features, available) if args.features else []
    if args.all_layers:
        inputs += [fi for fi in all_layer_inputs(available, args.all_layers) if fi not in inputs]
    if not inputs:
        inputs = parse_feature_inputs(list(available))
    if args.concat_last:
        extra = concat_last_layers(list(available), args.concat_last, args.concat_token)
        if extra not in inputs:
            inputs.append(extra)
    return inputs


def run(args) -> int:
    from ..errors import InputError
    from ..probes.data import renamed_single
    from ..probes.labels import read_classes_file
    from ..probes.inputs import stored_parts

    protocol = _protocol(args)
    if args.task in ("segmentation", "depth"):
        return _segmentation(args, protocol)
    if args.bn != "fixed":
        from ..errors import InputError

        raise InputError("--bn applies to --task segmentation only")
    _fill_defaults(args, "attentive" if args.method == "attentive" else "classification")
    if args.predict:
        return _predict(args)
    if not (args.train or args.train_features):
        raise InputError("give the training features: --train DIR or --train-features X.npy --train-labels Y.npy")
    if not (args.val or args.val_features):
        raise InputError("give the evaluation features: --val DIR or --val-features X.npy --val-labels Y.npy")
    if not args.out:
        raise InputError("--out DIR is required (where the results go)")
    device = _device(args.device)
    classes = read_classes_file(args.classes) if args.classes else None
    tokens = args.method == "attentive"
    train = _load(args.train, args.train_features, args.train_labels, args.label_pattern, classes, None, "train",
                  tokens=tokens)
    inputs = _protocol_inputs(protocol, list(train.features)) if protocol else _inputs(args, list(train.features))
    needed = stored_parts(inputs)
    train = train.subset_features(needed)  # validation reads only what is probed
    val = _load(args.val, args.val_features, args.val_labels, args.label_pattern, classes,
                needed if args.val else None, "val", tokens=tokens)
    if args.val_features and len(needed) == 1:
        val = renamed_single(val, needed[0])  # the same input, whatever the file is called
    from ..probes import run_probe
    from ..probes.attentive import AttentiveConfig
    from ..probes.linear import LinearConfig

    grid = dict(lrs=args.lrs, weight_decays=args.weight_decays, optimizer=args.optimizer, epochs=args.epochs,
                batch_size=args.batch_size)
    config = LinearConfig(**grid)
    attentive = AttentiveConfig(**grid, num_heads=args.attention_heads, num_queries=args.queries)
    result = run_probe(train, val, inputs, args.out, method=args.method, linear=config, attentive=attentive, cs=args.Cs,
                       max_iter=args.max_iter, ks=args.ks, temperature=args.temperature, standardize=args.standardize,
                       device=device, chunk_rows=args.chunk_rows, holdout_fraction=args.holdout_fraction,
                       seed=args.seed, refit=args.refit, overwrite=args.overwrite, progress=not args.quiet,
                       verbose=not args.quiet, shots=args.shots or (), shot_seeds=args.seeds,
                       protocol=protocol.record() if protocol else None)
    s = result.summary
    line = (f"{s['method']} probe on {s['feature']}: val top1 {s['top1']:.2f}  top5 {s['top5']:.2f}  "
            f"({s['chosen']}); results in {result.out}")
    if s.get("top1_ci95"):
        line = line.replace(f"val top1 {s['top1']:.2f}", f"val top1 {s['top1']:.2f} "
                                                          f"[{s['top1_ci95'][0]:.2f}, {s['top1_ci95'][1]:.2f}]", 1)
    for entry in s.get("few_shot") or ():
        ci = entry["top1_ci95"]
        line += (f"\n{entry['shots']}-shot ({entry['seeds']} seeds): top1 {entry['top1_mean']:.2f}"
                 + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    if s.get("best_layer"):
        best = s["best_layer"]
        line += f"; best layer {best['feature']} (held-out top1 {best['holdout_top1']:.2f})"
    print(line)
    return 0


def _predict(args) -> int:
    import sys

    from ..errors import InputError
    from ..probes import load_probe, predict_features
    from ..probes.data import renamed_single
    from ..probes.labels import read_classes_file

    if not (args.val or args.val_features):
        raise InputError("--predict needs the features to label: --val DIR or --val-features X.npy")
    if not args.out:
        raise InputError("--out DIR is required with --predict (where predictions.csv goes)")
    probe = load_probe(args.predict, device=_device(args.device))
    classes = read_classes_file(args.classes) if args.classes else None
    parts = list(probe.feature_input.parts)
    data = _load(args.val, args.val_features, args.val_labels, args.label_pattern, classes,
                 parts if args.val else None, "val", tokens=probe.method == "attentive")
    if args.val_features and len(parts) == 1:
        data = renamed_single(data, parts[0])
    result = predict_features(probe, data, args.out, top_k=args.top_k, overwrite=args.overwrite)
    s = result.summary
    message = (f"{s['predicted']} rows predicted ({s['failed']} failed) by the {s['method']} head on {s['feature']}; "
               f"{result.out / 'predictions.csv'}")
    if s["top1"] is not None:
        message += f"; top1 {s['top1']:.2f}  top5 {s['top5']:.2f}"
    print(message)
    if s["accuracy_note"]:
        print(f"sail-vision probe: note: {s['accuracy_note']}", file=sys.stderr)
    return 0


def _fill_defaults(args, task: str) -> None:
    """The grid and schedule defaults of ``task`` for the options left unset."""
    from ..probes import defaults, seg_defaults

    if task == "depth":
        values = {"lrs": seg_defaults.DEFAULT_DEPTH_LRS, "weight_decays": seg_defaults.DEFAULT_DEPTH_WEIGHT_DECAYS,
                  "epochs": seg_defaults.DEFAULT_SEG_EPOCHS, "batch_size": seg_defaults.DEFAULT_SEG_BATCH_SIZE,
                  "optimizer": "adamw"}
    elif task == "segmentation":
        values = {"lrs": seg_defaults.DEFAULT_SEG_LRS, "weight_decays": seg_defaults.DEFAULT_SEG_WEIGHT_DECAYS,
                  "epochs": seg_defaults.DEFAULT_SEG_EPOCHS, "batch_size": seg_defaults.DEFAULT_SEG_BATCH_SIZE,
                  "optimizer": "sgd"}
    elif task == "attentive":
        values = {"lrs": defaults.DEFAULT_ATTENTIVE_LRS, "weight_decays": defaults.DEFAULT_ATTENTIVE_WEIGHT_DECAYS,
                  "epochs": defaults.DEFAULT_ATTENTIVE_EPOCHS, "batch_size": defaults.DEFAULT_ATTENTIVE_BATCH_SIZE,
                  "optimizer": "adamw"}
    else:
        values = {"lrs": defaults.DEFAULT_LRS, "weight_decays": defaults.DEFAULT_WEIGHT_DECAYS,
                  "epochs": defaults.DEFAULT_EPOCHS, "batch_size": defaults.DEFAULT_BATCH_SIZE, "optimizer": "sgd"}
    for key, value in values.items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, tuple) else value)


#: Options of the classification task that --task segmentation refuses (option, attribute, unset value).
_CLASSIFICATION_ONLY = (("--predict", "predict", None), ("--train-features", "train_features", None),
                        ("--train-labels", "train_labels", None), ("--val-features", "val_features", None),
                        ("--val-labels", "val_labels", None), ("--classes", "classes", None),
                        ("--label-pattern", "label_pattern", None), ("--all-layers", "all_layers", None),
                        ("--concat-last", "concat_last", None), ("--shots", "shots", None))


def _protocol(args):
    """Apply ``--protocol`` to ``args`` (a contradicting option is an error); returns it or None."""
    from ..errors import InputError
    from ..probes.protocols import apply_protocol, get_protocol

    if not args.protocol:
        return None
    protocol = get_protocol(args.protocol)
    if args.task == "classification" and protocol.task == "segmentation" and args.task == \
            args.parser_defaults.get("task"):
        args.task = "segmentation"  # the protocol names the task
    apply_protocol(protocol, args, args.parser_defaults, args.option_names)
    if args.features or args.all_layers or args.concat_last:
        raise InputError(f"--features / --all-layers / --concat-last contradict --protocol {protocol.name}, which "
                         f"probes {protocol.features}")
    return protocol


def _protocol_inputs(protocol, available):
    from ..probes.protocols import protocol_inputs

    return protocol_inputs(protocol, available)


def _segmentation(args, protocol=None) -> int:
    """``--task segmentation`` and ``--task depth``: dense probes on patch maps with masks or depth maps."""
    from ..errors import InputError
    from ..probes.inputs import parse_feature_inputs
    from ..probes.seg_export import mmseg_cfg_options

    task = args.task
    for option, key, unset in _CLASSIFICATION_ONLY:
        if getattr(args, key) != unset:
            raise InputError(f"{option} applies to --task classification only")
    if task == "depth" and args.bn != "fixed":
        raise InputError("--bn batch: --task depth trains with the fixed statistics only (--bn fixed)")
    if args.bn == "batch" and args.standardize is not None:
        raise InputError("--standardize / --no-standardize apply to --bn fixed only (--bn batch normalises with "
                         "batch statistics)")
    if args.method != "linear":
        raise InputError(f"--method {args.method}: --task {task} trains linear heads only")
    what = "masks" if task == "segmentation" else "depth maps"
    if not args.train or not args.val:
        raise InputError(f"--task {task} needs --train DIR and --val DIR (feature folders with {what})")
    if not args.out:
        raise InputError("--out DIR is required (where the results go)")
    if not args.features and not protocol:
        raise InputError(f"--task {task} needs --features NAME [NAME ...]: patch features such as "
                         "layer-32_patch, or layer-29_patch+layer-30_patch+... to concatenate layers")
    if task == "depth":
        for option, pair in (("--depth-range", args.depth_range), ("--eval-depth-range", args.eval_depth_range)):
            if len(pair) != 2:
                raise InputError(f"{option}: give MIN,MAX (two numbers), got {pair}")
    _fill_defaults(args, task)
    device = _device(args.device)
    common = dict(lrs=args.lrs, weight_decays=args.weight_decays, optimizer=args.optimizer, epochs=args.epochs,
                  batch_size=args.batch_size, device=device, standardize=args.standardize is not False)
    if task == "depth":
        from ..probes.depth import run_depth_probe as run_dense
        from ..probes.depth_train import DepthConfig, DepthData as Data

        config = DepthConfig(**common, n_bins=args.n_bins, min_depth=args.depth_range[0],
                             max_depth=args.depth_range[1], bin_spacing=args.bin_spacing,
                             normalisation=args.normalisation, min_depth_eval=args.eval_depth_range[0],
                             max_depth_eval=args.eval_depth_range[1])
    else:
        from ..probes.seg_data import SegmentationData as Data
        from ..probes.seg_heads import SegmentationConfig
        from ..probes.segmentation import run_segmentation_probe as run_dense

        config = SegmentationConfig(**common, bn=args.bn)
    train = Data.from_folder(args.train)
    val = Data.from_folder(args.val)
    inputs = (_protocol_inputs(protocol, train.names) if protocol else
              parse_feature_inputs(args.features, train.names or None))
    result = run_dense(train, val, inputs, args.out, config, holdout_fraction=args.holdout_fraction,
                       seed=args.seed, refit=args.refit, overwrite=args.overwrite, progress=not args.quiet,
                       verbose=not args.quiet, protocol=protocol.record() if protocol else None)
    s = result.summary

    def pct(value):
        return "nan" if value is None else f"{value:.2f}"

    if task == "depth":
        print(f"depth probe on {s['feature']}: val rmse {s['rmse']:.4f} m  abs_rel {s['abs_rel']:.4f}  "
              f"d1 {s['d1']:.4f}  ({s['chosen']}); results in {result.out}; mmseg checkpoint "
              f"{result.out / s['files']['mmseg_checkpoint']}" if s.get("rmse") is not None else
              f"depth probe on {s['feature']}: no val pixel in the evaluation range; results in {result.out}")
    else:
        print(f"segmentation probe on {s['feature']}: val mIoU {pct(s['mIoU'])}  mAcc {pct(s['mAcc'])}  "
              f"aAcc {pct(s['aAcc'])}  ({s['chosen']}); results in {result.out}; mmseg checkpoint "
              f"{result.out / s['files']['mmseg_checkpoint']}")
    options = mmseg_cfg_options(s["mmseg"])
    unknown = "" if s.get("checkpoint") else " model.backbone.checkpoint=CHECKPOINT"
    print(f"run it with the backbone: python tools/test.py CONFIG "
          f"{shlex.quote(str(result.out / s['files']['mmseg_checkpoint']))} --cfg-options "
          f"{' '.join(shlex.quote(o) for o in options)}{unknown}")
    if unknown:
        print(f"(the manifest of {args.train} records no checkpoint path: put the one its features came from "
              f"in place of CHECKPOINT)")
    return 0
