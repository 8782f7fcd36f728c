#!/usr/bin/env bash
# Build the separate environment that benchmarks/bench_upstream.py runs upstream SAIL in.
#
# Upstream's modeling_sail.py is written against transformers 4.42 (its requirements.txt pins
# transformers==4.42.0 and torch==2.5.1); sail-vision needs transformers >= 4.56. The two cannot
# share one environment, so this script makes a second one outside the repository:
#
#   $SAIL_UPSTREAM_CACHE/upstream/       upstream's files, extracted from a git mirror or clone
#                                        (modeling_sail.py, example.py, requirements.txt, LICENSE)
#   $SAIL_UPSTREAM_CACHE/upstream-venv/  python -m venv with torch (CPU build) + transformers 4.42.x
#
# SAIL_UPSTREAM_CACHE defaults to ~/.cache/sail-vision. Nothing of upstream's is copied into
# this repository; the benchmark loads the files at run time from the path you give it.
#
# Usage:
#   scripts/upstream_env.sh [--source GIT_DIR_OR_CHECKOUT_OR_URL] [--rev REV] [--python PYTHON]
#                           [--transformers VERSION] [--torch SPEC] [--force]
#
#   --source        where upstream comes from: a bare git mirror (e.g. .../ByteDance-Seed+SAIL/repo),
#                   a checkout (a folder holding modeling_sail.py), or a git URL to clone.
#                   Default: $SAIL_UPSTREAM_SOURCE, else /work/.mirror/ByteDance-Seed+SAIL/repo when it
#                   exists, else https://github.com/ByteDance-Seed/SAIL.git
#   --rev           commit to extract from a git source (default: HEAD; tested with 720c3fb)
#   --python        interpreter for the venv (default: python3.11, else python3). transformers 4.42
#                   needs tokenizers 0.19, which has wheels for CPython 3.8-3.12.
#   --transformers  transformers version (default 4.42.0, upstream's pin; see below)
#   --torch         pip requirement for torch (default: torch==VERSION with the exact version of the
#                   repository's .venv, e.g. torch==2.13.0+cpu, so both sides run the same kernels
#                   and a +cpu pin can only be met by the CPU wheel, never a CUDA download; torch==2.13.0
#                   without a .venv). A wheel path works too. After installing, the script refuses
#                   a CUDA torch unless SAIL_UPSTREAM_ALLOW_CUDA=1.
#   --force         rebuild the venv and re-extract the files even if they exist
#
# Afterwards:
#   .venv/bin/python benchmarks/bench_upstream.py \
#       --upstream ~/.cache/sail-vision/upstream --upstream-python ~/.cache/sail-vision/upstream-venv/bin/python
# (those two are also the benchmark's defaults).
#
# Versions: transformers 4.42.0 is exactly upstream's pin; it installs on CPython 3.11 (tokenizers
# 0.19.1 and huggingface-hub < 1.0 have wheels), imports modeling_sail.py unchanged with torch 2.13
# and reproduces sail-vision's hidden states bit for bit in the benchmark's parity check, so no
# newer 4.4x was needed. torch is not upstream's 2.5.1 but the 2.13.0 of sail-vision's own
# environment: then both sides run the same CPU kernels and the comparison measures the code, not
# the torch release. numpy < 2 because transformers 4.42 predates numpy 2.
set -euo pipefail

CACHE="${SAIL_UPSTREAM_CACHE:-$HOME/.cache/sail-vision}"
SOURCE="${SAIL_UPSTREAM_SOURCE:-}"
REV="HEAD"
PYTHON=""
TRANSFORMERS_VERSION="4.42.0"
TORCH_SPEC=""
FORCE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE="$2"; shift 2 ;;
        --rev) REV="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --transformers) TRANSFORMERS_VERSION="$2"; shift 2 ;;
        --torch) TORCH_SPEC="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$TORCH_SPEC" ]; then
    REPO_PY="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
    version=""
    if [ -x "$REPO_PY" ]; then
        version="$("$REPO_PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
    fi
    TORCH_SPEC="torch==${version:-2.13.0}"
fi

UPSTREAM_DIR="$CACHE/upstream"
VENV="$CACHE/upstream-venv"
FILES=(modeling_sail.py example.py requirements.txt LICENSE)

if [ -z "$SOURCE" ]; then
    if [ -d /work/.mirror/ByteDance-Seed+SAIL/repo ]; then
        SOURCE=/work/.mirror/ByteDance-Seed+SAIL/repo
    else
        SOURCE=https://github.com/ByteDance-Seed/SAIL.git
    fi
fi

# ------------------------------------------------------------------ 1. upstream's files
extract_from_git_dir() {  # $1 = a git directory (bare mirror or .git)
    local gitdir="$1" commit
    commit="$(git --git-dir="$gitdir" rev-parse --verify "$REV^{commit}")"
    rm -rf "$UPSTREAM_DIR.partial"
    mkdir -p "$UPSTREAM_DIR.partial"
    git --git-dir="$gitdir" archive "$commit" "${FILES[@]}" | tar -x -C "$UPSTREAM_DIR.partial"
    echo "$commit" > "$UPSTREAM_DIR.partial/UPSTREAM_COMMIT"
    rm -rf "$UPSTREAM_DIR"
    mv "$UPSTREAM_DIR.partial" "$UPSTREAM_DIR"
    echo "upstream $commit extracted to $UPSTREAM_DIR"
}

if [ "$FORCE" = 1 ] || [ ! -f "$UPSTREAM_DIR/modeling_sail.py" ]; then
    mkdir -p "$CACHE"
    if [ -d "$SOURCE" ] && git --git-dir="$SOURCE" rev-parse --verify --quiet "HEAD^{commit}" >/dev/null 2>&1; then
        extract_from_git_dir "$SOURCE"
    elif [ -d "$SOURCE/.git" ]; then
        extract_from_git_dir "$SOURCE/.git"
    elif [ -f "$SOURCE/modeling_sail.py" ]; then
        rm -rf "$UPSTREAM_DIR"; mkdir -p "$UPSTREAM_DIR"
        for f in "${FILES[@]}"; do [ -f "$SOURCE/$f" ] && cp "$SOURCE/$f" "$UPSTREAM_DIR/"; done
        echo "upstream files copied from $SOURCE to $UPSTREAM_DIR"
    else
        clone="$CACHE/upstream-clone.git"
        rm -rf "$clone"
        git clone --bare --quiet "$SOURCE" "$clone"
        extract_from_git_dir "$clone"
    fi
else
    echo "upstream files already in $UPSTREAM_DIR ($(cat "$UPSTREAM_DIR/UPSTREAM_COMMIT" 2>/dev/null || echo 'commit unknown'))"
fi
[ -f "$UPSTREAM_DIR/requirements.txt" ] && echo "upstream pins: $(tr '\n' ' ' < "$UPSTREAM_DIR/requirements.txt")"

# ------------------------------------------------------------------ 2. the virtual environment
if [ -z "$PYTHON" ]; then
    PYTHON="$(command -v python3.11 || command -v python3)"
fi
if [ "$FORCE" = 1 ]; then rm -rf "$VENV"; fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
# torch first, on its own, binary only: then transformers' resolver keeps it.
echo "installing $TORCH_SPEC, then transformers==$TRANSFORMERS_VERSION into $VENV"
"${PIP[@]}" --only-binary=:all: "$TORCH_SPEC" "numpy<2"
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
if [ "${SAIL_UPSTREAM_ALLOW_CUDA:-0}" != 1 ] && "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
    echo "error: pip installed a CUDA build of torch ($TORCH_VERSION) in $VENV; put the CPU wheel on" \
         "PIP_FIND_LINKS or pass --torch /path/to/torch-...+cpu...whl (SAIL_UPSTREAM_ALLOW_CUDA=1 to accept it)" >&2
    exit 1
fi
# einops: imported by modeling_sail.py. numpy<2: transformers 4.42 predates numpy 2.
"${PIP[@]}" "torch==${TORCH_VERSION}" "transformers==${TRANSFORMERS_VERSION}" einops "numpy<2" safetensors

"$VENV/bin/python" - "$UPSTREAM_DIR" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
import torch, transformers
import modeling_sail  # noqa: F401  (fails here if this transformers cannot import upstream's code)
print(f"upstream environment ready: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}; modeling_sail imports")
EOF
echo "venv: $VENV"
echo "run:  .venv/bin/python benchmarks/bench_upstream.py --upstream $UPSTREAM_DIR --upstream-python $VENV/bin/python"
