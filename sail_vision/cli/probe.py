"""``sail-vision probe``: classification probes (linear grid, logreg, k-NN) on extracted features."""

from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None


def register(subparsers) -> None:
    from ..probes.defaults import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_ROWS, DEFAULT_CS, DEFAULT_EPOCHS,
                                   DEFAULT_HOLDOUT_FRACTION, DEFAULT_KS, DEFAULT_LRS, DEFAULT_MAX_ITER,
                                   DEFAULT_TEMPERATURE, DEFAULT_WEIGHT_DECAYS)

    parser = subparsers.add_parser(
        "probe", help="classification probes on extracted features (linear grid, logreg, k-NN)",
        description="Train classification probes on features from `sail-vision extract` (or plain .npy arrays). "
                    "Hyper-parameters are chosen on a seeded split held out from the training features; the "
                    "chosen point is refit on all training rows and evaluated once on the val features. "
                    "Writes grid.jsonl, summary.json, head.safetensors + head.json, val_predictions.npy and "
                    "accuracy.png to --out. With --predict, applies a saved head instead.",
        )
    data = parser.add_argument_group("data")
    data.add_argument("--train", metavar="DIR", help="training feature folder (the --out of `sail-vision extract`)")
    data.add_argument("--val", metavar="DIR", help="evaluation feature folder")
    data.add_argument("--train-features", metavar="X.npy", help="training features as an (N, D) .npy array "
                      "(instead of --train)")
    data.add_argument("--train-labels", metavar="Y.npy", help="(N,) integer labels of --train-features, or "
                      "labels replacing those stored in --train")
    data.add_argument("--val-features", metavar="X.npy", help="evaluation features as an (N, D) .npy array")
    data.add_argument("--val-labels", metavar="Y.npy", help="labels of --val-features, or replacing those of --val")
    data.add_argument("--label-pattern", metavar="REGEX", help="derive labels of unlabelled feature folders from "
                      "image file names: the first group of REGEX (e.g. '^(cat|dog)')")
    data.add_argument("--features", nargs="+", metavar="NAME",
                      help="feature inputs: stored names such as layer-32_mean layer-32_end, or concatenations "
                           "joined by '+' (layer-31_end+layer-32_end); default: every pooled feature of --train "
                           "(plain arrays: the file stem)")
    data.add_argument("--concat-last", type=int, metavar="N", help="also probe DINOv2's input: the --concat-token "
                      "feature of the last N layers plus the last layer's mean of patch tokens")
    data.add_argument("--concat-token", default="end", choices=("end", "cls"), help="token pooled for --concat-last (default: %(default)s)")
    method = parser.add_argument_group("method")
    method.add_argument("--method", default="linear", choices=("linear", "logreg", "knn"),
                        help="linear: one-pass grid of softmax heads; logreg: scikit-learn LogisticRegression "
                             "over --Cs; knn: cosine k-NN with temperature-weighted votes over --ks (default: %(default)s)")
    method.add_argument("--holdout-fraction", type=float, default=DEFAULT_HOLDOUT_FRACTION,
                        help="share of the training rows held out (seeded, stratified) to choose hyper-parameters; "
                             "unused when the grid has one point (default: %(default)s)")
    method.add_argument("--seed", type=int, default=0, help="seed of the held-out split and of shuffling (default: %(default)s)")
    method.add_argument("--no-refit", dest="refit", action="store_false",
                        help="keep the chosen head as trained on the non-held-out rows instead of refitting it on "
                             "all training rows (default: refit)")
    method.add_argument("--standardize", dest="standardize", action="store_true", default=None,
                        help="standardise features with training statistics (default: on for linear, off for "
                             "logreg; never for knn)")
    method.add_argument("--no-standardize", dest="standardize", action="store_false", help="do not standardise (the linear default is to standardise)")
    linear = parser.add_argument_group("linear")
    linear.add_argument("--lrs", type=_floats, default=list(DEFAULT_LRS), metavar="LR,...",
                        help="learning rates of the grid, comma or space separated (default: 13 log-spaced values 1e-4 .. 1)")
    linear.add_argument("--weight-decays", type=_floats, default=list(DEFAULT_WEIGHT_DECAYS), metavar="WD,...",
                        help="weight decays of the grid (default: 0,0.0001)")
    linear.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                        help="sgd (momentum 0.9) or adamw; cosine learning-rate schedule (default: %(default)s)")
    linear.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the training features (default: %(default)s)")
    linear.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per step (default: %(default)s)")
    linear.add_argument("--device", default="auto",
                        help="where the linear grid trains: auto (cuda when available, else cpu), cpu, cuda, cuda:N (default: %(default)s)")
    linear.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                        help="rows read from the memory-mapped features at once (shuffled blocks) (default: %(default)s)")
    other = parser.add_argument_group("logreg and knn")
    other.add_argument("--Cs", type=_floats, default=list(DEFAULT_CS), metavar="C,...",
                       help="inverse regularisation strengths for logreg (default: 13 values 1e-6 .. 1e6)")
    other.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, help="L-BFGS iterations for logreg (default: %(default)s)")
    other.add_argument("--ks", type=_floats, default=list(DEFAULT_KS), metavar="K,...", help="neighbour counts for knn (default: 10,20,100,200)")
    other.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="knn vote temperature T (default: %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", help="results folder (required unless --predict)")
    output.add_argument("--overwrite", action="store_true", help="replace an earlier result in --out")
    output.add_argument("--predict", metavar="PROBE_DIR",
                        help="apply the head saved in PROBE_DIR to --val/--val-features: writes predictions.npy "
                             "(and scores.npy) to --out (default PROBE_DIR) and prints accuracy when labels exist")
    output.add_argument("--quiet", action="store_true", help="no progress bars or table")
    parser.set_defaults(func=run)


def _load(folder, features_file, labels_file, label_pattern, names, role):
    from ..errors import InputError
    from ..probes import load_arrays, load_feature_dir

    if folder and features_file:
        raise InputError(f"pass either --{role} DIR or --{role}-features X.npy, not both")
    if folder:
        return load_feature_dir(folder, names, labels=labels_file, label_pattern=label_pattern)
    if features_file:
        return load_arrays(features_file, labels_file)
    return None


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..probes.data import concat_last_layers, parse_feature_inputs

    if args.predict:
        return _predict(args)
    if not (args.train or args.train_features):
        raise InputError("give the training features: --train DIR or --train-features X.npy --train-labels Y.npy")
    if not (args.val or args.val_features):
        raise InputError("give the evaluation features: --val DIR or --val-features X.npy --val-labels Y.npy")
    if not args.out:
        raise InputError("--out DIR is required (where the results go)")
    inputs = parse_feature_inputs(args.features) if args.features else None
    train = _load(args.train, args.train_features, args.train_labels, args.label_pattern, None, "train")
    if inputs is None:
        inputs = parse_feature_inputs(list(train.features))
    if args.concat_last:
        extra = concat_last_layers(list(train.features), args.concat_last, args.concat_token)
        if extra not in inputs:
            inputs.append(extra)
    needed = sorted({p for fi in inputs for p in fi.parts})
    if args.train:  # keep only what is probed (memmaps are cheap, but validation reads them)
        train = _load(args.train, None, args.train_labels, args.label_pattern, needed, "train")
    val = _load(args.val, args.val_features, args.val_labels, args.label_pattern, needed if args.val else None, "val")
    if args.val_features and len(inputs) == 1 and len(inputs[0].parts) == 1:
        only = inputs[0].parts[0]
        val.features = {only: next(iter(val.features.values()))}  # same input, whatever the file is called
    from ..encoder import resolve_device
    from ..probes import run_probe
    from ..probes.linear import LinearConfig

    ks = [int(k) for k in args.ks]
    if any(k != float(v) for k, v in zip(ks, args.ks)):
        raise InputError(f"--ks must be whole numbers, got {args.ks}")
    config = LinearConfig(lrs=args.lrs, weight_decays=args.weight_decays, optimizer=args.optimizer,
                          epochs=args.epochs, batch_size=args.batch_size, chunk_rows=max(1, args.chunk_rows),
                          device=str(resolve_device(args.device)))
    reference = {"feature_dir": str(Path(args.train).absolute()), "label_pattern": args.label_pattern} \
        if args.train and not args.train_labels else None
    result = run_probe(train, val, inputs, args.out, method=args.method, linear=config, cs=args.Cs,
                       max_iter=args.max_iter, ks=ks, temperature=args.temperature, standardize=args.standardize,
                       holdout_fraction=args.holdout_fraction, seed=args.seed, refit=args.refit,
                       overwrite=args.overwrite, progress=not args.quiet, verbose=not args.quiet,
                       bank_reference=reference)
    s = result.summary
    print(f"{s['method']} probe on {s['feature']}: val top1 {s['top1']:.2f}  top5 {s['top5']:.2f}  "
          f"({s['chosen']}); results in {result.out}")
    return 0


def _predict(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..errors import InputError
    from ..probes import load_probe

    probe = load_probe(args.predict)
    data = _load(args.val, args.val_features, args.val_labels, args.label_pattern,
                 list(probe.feature_input.parts) if args.val else None, "val")
    if data is None:
        raise InputError("--predict needs the features to label: --val DIR or --val-features X.npy")
    if args.val_features and len(probe.feature_input.parts) == 1:
        data.features = {probe.feature_input.parts[0]: next(iter(data.features.values()))}
    out = Path(args.out or args.predict)
    out.mkdir(parents=True, exist_ok=True)
    scores = probe.scores(data)
    predictions = scores.argmax(1).astype(np.int64)
    np.save(out / "predictions.npy", predictions)
    np.save(out / "scores.npy", scores.astype(np.float32))
    message = f"{predictions.size} predictions written to {out / 'predictions.npy'}"
    if data.labels is not None:
        top1 = 100.0 * float((predictions == data.labels).mean()) if predictions.size else 0.0
        message += f"; top1 {top1:.2f}"
    print(message)
    return 0
