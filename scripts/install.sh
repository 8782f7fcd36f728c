#!/usr/bin/env bash
# Create (or update) a virtual environment with sail-vision and its CPU stack, as CI does.
#   bash scripts/install.sh            -> .venv in the project root
#   VENV=/path/to/env bash scripts/install.sh
# GPU machines: install your CUDA torch and full mmcv 2.1.0 first, then `pip install -e '.[mmseg]'`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, exact: a looser requirement makes pip fetch a multi-GB CUDA build.
"${pip[@]}" "torch==2.13.0"
# mmcv-lite: mmcv without compiled ops (CPU); the [mmseg] extra leaves the choice of mmcv to the user.
"${pip[@]}" -c "$root/constraints-ci.txt" mmcv-lite -e "$root[test,mmseg,shards,ray]"
# mmengine / mmcv pull in opencv-python, which needs libGL; swap in the headless build.
"$venv/bin/python" -m pip uninstall -q -y opencv-python >/dev/null 2>&1 || true
"${pip[@]}" --no-deps -c "$root/constraints-ci.txt" --force-reinstall opencv-python-headless
# A fresh interpreter whose first import is mmseg.apis: checks the start-up hook (sail_vision_mmcv_lite.pth).
"$venv/bin/python" -c "import mmseg.apis, torch, transformers, mmseg, sail_vision; print('sail-vision', sail_vision.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| mmseg', mmseg.__version__)"
