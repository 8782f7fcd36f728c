#!/usr/bin/env bash
# Multi-GPU training with torchrun:  bash tools/dist_train.sh CONFIG NUM_GPUS [train.py options]
# Environment (defaults): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500), PYTHON (python).
set -eu
if [ $# -lt 2 ]; then echo "usage: $0 CONFIG NUM_GPUS [train.py options]" >&2; exit 2; fi
config=$1; gpus=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-python}" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" --nproc_per_node="$gpus" \
  "$here/train.py" "$config" --launcher pytorch "$@"
