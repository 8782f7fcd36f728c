#!/usr/bin/env bash
# The first-GPU-run check of issue 21, in one command (under 10 minutes on one H100):
#   1. the CUDA tests (everything that skips on a CPU machine, plus tests/gpu),
#   2. bench_gpu.py: encoder images/s and fraction of dense bf16 peak on SAIL-7B shapes (random weights)
#      at 224 and 448 px, all 32 blocks and block 16, grouped and packed; extract vs the bare encoder;
#      GPU busy fraction; peak memory,
#   3. bench_probes_gpu.py: kNN queries/s over a float16 bank, segmentation-probe training images/s,
#   4. render_gpu_table.py: the BENCHMARKS.md tables (goals met or missed) into $OUT/gpu_table.md.
# Installs nothing. Exits 3 (with a message) when torch sees no CUDA GPU, 2 on bad arguments, else the
# first failing step's status (later steps still run; their JSON is kept).
#
#   benchmarks/gpu_check.sh [--out DIR] [--python PY] [--skip-tests] [--quick-bench]
set -uo pipefail

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --out DIR (default: benchmarks/results/gpu_check), --python PY (default: \$PYTHON or python),"
  echo "         --skip-tests (benchmarks only), --quick-bench (small benchmark sizes: a smoke run)"
}

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="$root/benchmarks/results/gpu_check"
py="${PYTHON:-python}"
tests=1
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || { echo "gpu_check: --python needs an interpreter" >&2; exit 2; }; py="$2"; shift 2 ;;
    --skip-tests) tests=0; shift ;;
    --quick-bench) quick=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to torch in '$py' (torch.cuda.is_available() is False); run this on a" \
       "GPU machine with a CUDA build of torch" >&2
  exit 3
fi
mkdir -p "$out" || { echo "gpu_check: cannot create --out '$out'" >&2; exit 2; }
cd "$root" || exit 2
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log, keep the first failure's status
  local name="$1" limit="$2"; shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - started))s"
  [ "$rc" -eq 0 ] || [ "$status" -ne 0 ] || status=$rc
}

"$py" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0), 'torch', torch.__version__)" | tee "$out/device.txt"
if [ "$tests" -eq 1 ]; then
  step cuda_tests 240 "$py" -m pytest -q -rs -x -p no:cacheprovider tests/gpu tests/test_packed_kernels.py \
    tests/test_packing.py tests/test_attention.py tests/mmseg/test_backbone.py tests/mmseg/test_backbone_packing.py \
    tests/extraction/test_runner.py tests/probes/test_knn.py tests/probes/test_linear.py tests/probes/test_streaming.py \
    -k "cuda or gpu or kernel or flex or varlen"
fi
if [ "$quick" -eq 1 ]; then
  gpu_args=(--resolutions 224 --batch 4 --rounds 2 --extract-images 32 --extract-rounds 1)
  probe_args=(--bank-rows 20000 --queries 2000 --seg-images 32 --epochs 1)
else
  gpu_args=(--resolutions 224 448 --batch 16 --rounds 3 --extract-images 128 --extract-rounds 2 --profile-images 64)
  probe_args=(--bank-rows 200000 --queries 10000 --seg-images 128 --epochs 2)
fi
step bench_gpu 300 "$py" benchmarks/bench_gpu.py --device cuda --cache-dir "$out/cache" "${gpu_args[@]}"
step bench_probes_gpu 150 "$py" benchmarks/bench_probes_gpu.py --device cuda --cache-dir "$out/cache" "${probe_args[@]}"
cp benchmarks/results/bench_gpu.json benchmarks/results/bench_probes_gpu.json "$out/" 2>/dev/null
if [ -f "$out/bench_gpu.json" ]; then
  probes_json=()
  [ -f "$out/bench_probes_gpu.json" ] && probes_json=("$out/bench_probes_gpu.json")
  step render 30 "$py" benchmarks/render_gpu_table.py "$out/bench_gpu.json" "${probes_json[@]}" --out "$out/gpu_table.md"
fi
rm -rf "$out/cache"
echo "gpu_check: results in $out (exit $status)"
exit "$status"
