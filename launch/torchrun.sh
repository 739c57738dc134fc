#!/usr/bin/env bash
# One node, NPROC ranks of the trainer under torchrun:
#   launch/torchrun.sh NPROC [hydra overrides...]
# Env: CHIMED_MODULE (default megatron_chimed.train), MASTER_PORT (default 29500),
#      TORCHRUN (default torchrun; e.g. "python -m torch.distributed.run").
# Same rendezvous as the Slurm job (static, here on 127.0.0.1) and the same signal contract:
# USR1 or TERM to the ranks makes them checkpoint at the next step and exit 0.
set -euo pipefail

if [ $# -lt 1 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NPROC [hydra overrides...]" >&2
  exit 2
fi
nproc=$1
shift

# torchrun ignores USR1 (an ignored signal survives exec) so that USR1 sent to its whole process
# tree, as Slurm signals a step, is acted on by the ranks only: by default it would kill torchrun.
# (By hand: `pkill -USR1 -P <torchrun pid>`; torchrun puts each rank in its own session.)
trap '' USR1
# GPU settings, unless already set: the same as launch/config.py default_gpu_env (a test keeps
# them equal). CUDA_DEVICE_MAX_CONNECTIONS=1 is what sequence parallelism needs.
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export TORCH_NCCL_AVOID_RECORD_STREAMS="${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
read -r -a torchrun <<<"${TORCHRUN:-torchrun}"
exec "${torchrun[@]}" --nnodes=1 --node_rank=0 --nproc_per_node="$nproc" \
  --master_addr=127.0.0.1 --master_port="${MASTER_PORT:-29500}" \
  -m "${CHIMED_MODULE:-megatron_chimed.train}" "$@"
