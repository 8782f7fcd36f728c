"""``sail-vision demo``: a tiny random checkpoint, sample photos, features and a PCA picture."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="try everything in seconds: random checkpoint, sample photos, features, PCA picture",
        description="Make (once, then cached) a tiny random SAIL-format checkpoint, write scikit-learn's sample "
                    "photos plus a few crops and resizes, extract features of them and draw a PCA picture. "
                    "Downloads nothing. The checkpoint cache is $SAIL_VISION_CACHE, else "
                    "$XDG_CACHE_HOME/sail-vision, else ~/.cache/sail-vision. The features come from random "
                    "weights: they show the pipeline, not SAIL's quality.")
    p.add_argument("--out", default="sail-vision-demo",
                   help="folder for the images, features and picture; re-running replaces what the demo made "
                        "there (default: ./sail-vision-demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, progress=not args.no_progress)
    made = "made and cached" if result.checkpoint_made else "cached"
    print(f"checkpoint   {result.checkpoint}  (tiny random SAIL checkpoint, {made})")
    print(f"images       {result.out / 'images'}  ({len(result.images)} sample photos and crops)")
    print(f"features     {result.features}  ({result.summary})")
    print(f"pca picture  {result.pca_picture}")
    print(f"done in {result.seconds:.1f} s. Next:")
    print(f"  python -c \"from sail_vision.feature_store import open_feature_dir; "
          f"f = open_feature_dir('{result.features}'); print(f, f.feature('layer-4_mean').shape)\"")
    print(f"  sail-vision extract --checkpoint {result.checkpoint} --images YOUR_IMAGES --out feats --pool mean")
    return 0
