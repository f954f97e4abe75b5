#!/usr/bin/env bash
# Distributed training under Slurm, one task per GPU, any number of nodes:
#   [GPUS=16 GPUS_PER_NODE=8] tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options]
# srun starts GPUS tasks; mmengine's slurm launcher reads SLURM_PROCID, SLURM_NTASKS and
# SLURM_NODELIST (MASTER_ADDR is the first node, MASTER_PORT is PORT or 29500).
# SRUN_ARGS adds srun options (e.g. SRUN_ARGS="--quotatype=auto"); PYTHON picks the interpreter.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG [tools/train.py options]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
DIR="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${PORT:-}" ]; then
    export MASTER_PORT=$PORT
fi

# shellcheck disable=SC2086  # SRUN_ARGS holds several words on purpose
PYTHONPATH="$DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$DIR/train.py" "$CONFIG" --launcher slurm "${@:4}"
