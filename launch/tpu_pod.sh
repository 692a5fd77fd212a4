#!/usr/bin/env bash
# Run one exectune command on every worker of a Cloud TPU VM (a single host or a pod slice).
#
#   launch/tpu_pod.sh --name NAME --zone ZONE [--type v5litepod-8] [--project P] [--create]
#                     [--workers N] [--retries R] [--logs DIR] [--dry-run] -- exectune sft --config F ...
#
# Every worker gets the same command; jax.distributed discovers the pod's hosts from the TPU
# environment (exectune_jax.parallel.init_distributed), so there is no coordinator to pass and
# no Pathways. Each worker's output goes to LOGS/worker-<i>.log. When a run dies (preemption, a
# host failure), the script waits for the VM to be READY again and reruns the same command: the
# run directory's checkpoint makes that a resume. Put run_dir on storage every worker sees
# (a gs:// bucket via gcsfuse, or a Filestore mount). --dry-run prints every command instead.
set -euo pipefail

name="" zone="" type="v5litepod-8" project="" create=0 workers="" retries=3 logs="logs/tpu" dry=0
version="tpu-ubuntu2204-base" repo_dir="exectune-jax"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --workers) workers="$2"; shift 2 ;;
    --retries) retries="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" || $# -eq 0 ]]; then
  echo "tpu_pod.sh: --name, --zone and a command after -- are required (see --help)" >&2
  exit 2
fi

gc=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -n "$project" ]] && where+=(--project "$project")
printf -v cmd '%q ' "$@"

run() {
  if (( dry )); then printf '%q ' "$@"; echo; else "$@"; fi
}

if (( create )); then
  run "${gc[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version"
fi

if [[ -z "$workers" ]]; then
  if (( dry )); then
    workers=1
  else
    workers=$("${gc[@]}" describe "$name" "${where[@]}" --format='value(networkEndpoints.len())')
  fi
fi

# The repository as it is here, on every worker, installed with the TPU runtime.
archive="/tmp/${repo_dir}.tar.gz"
run git archive --format=tar.gz -o "$archive" HEAD
run "${gc[@]}" scp "$archive" "$name:~/" "${where[@]}" --worker=all
run "${gc[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "mkdir -p ~/${repo_dir} && tar -xzf ~/${repo_dir}.tar.gz -C ~/${repo_dir} && cd ~/${repo_dir} && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"

(( dry )) || mkdir -p "$logs"
attempt=0
while :; do
  pids=()
  for ((w = 0; w < workers; w++)); do
    remote="cd ~/${repo_dir} && PATH=\$PWD/.venv/bin:\$PATH ${cmd}"
    if (( dry )); then
      run "${gc[@]}" ssh "$name" "${where[@]}" --worker="$w" --command "$remote"
    else
      "${gc[@]}" ssh "$name" "${where[@]}" --worker="$w" --command "$remote" \
        >"$logs/worker-$w.log" 2>&1 &
      pids+=($!)
    fi
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  (( status == 0 )) && exit 0
  attempt=$((attempt + 1))
  if (( attempt > retries )); then
    echo "tpu_pod.sh: the command failed $attempt times; see $logs/worker-*.log" >&2
    exit 1
  fi
  echo "tpu_pod.sh: a worker failed (attempt $attempt); waiting for the VM, then resuming" >&2
  until [[ "$("${gc[@]}" describe "$name" "${where[@]}" --format='value(state)')" == READY ]]; do
    sleep 30
  done
done
