#!/usr/bin/env bash
# Multi-GPU testing with torchrun:  bash tools/dist_test.sh CONFIG CHECKPOINT NUM_GPUS [test.py options]
# Environment (defaults): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python).
set -eu
if [ $# -lt 3 ]; then echo "usage: $0 CONFIG CHECKPOINT NUM_GPUS [test.py options]" >&2; exit 2; fi
config=$1; checkpoint=$2; gpus=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" --nproc_per_node="$gpus" \
  "$here/test.py" "$config" "$checkpoint" --launcher pytorch "$@"
