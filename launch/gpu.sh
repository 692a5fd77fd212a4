#!/usr/bin/env bash
# Run one exectune command on a GPU host, or on one node of a multi-node GPU job.
#
#   launch/gpu.sh [--nodes N --node-rank R --coordinator HOST:PORT] [--dry-run] -- exectune rl ...
#
# On one host a single process drives every local GPU (the mesh spans them). With several
# nodes, run this once per node with its rank: it sets JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID, which exectune_jax.parallel.init_distributed reads.
# XLA flags enable the latency-hiding scheduler so collectives overlap compute.
# --dry-run prints the environment and the command instead of running it.
set -euo pipefail

nodes=1 rank=0 coordinator="" dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --node-rank) rank="$2"; shift 2 ;;
    --coordinator) coordinator="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "gpu.sh: a command after -- is required (see --help)" >&2
  exit 2
fi
if (( nodes > 1 )) && [[ -z "$coordinator" ]]; then
  echo "gpu.sh: --coordinator HOST:PORT is required with --nodes $nodes" >&2
  exit 2
fi

env_vars=(
  "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  "XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
)
if (( nodes > 1 )); then
  env_vars+=("JAX_COORDINATOR_ADDRESS=$coordinator" "JAX_NUM_PROCESSES=$nodes" "JAX_PROCESS_ID=$rank")
fi

if (( dry )); then
  printf '%q ' env "${env_vars[@]}" "$@"
  echo
  exit 0
fi
exec env "${env_vars[@]}" "$@"
