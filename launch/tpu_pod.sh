#!/usr/bin/env bash
# Run one exectune command on every worker of a Cloud TPU VM (a single host or a pod slice).
#
#   launch/tpu_pod.sh --name NAME --zone ZONE [--type v5litepod-8] [--project P] [--create] [--spot]
#                     [--workers N] [--sync gs://B/PATH=DIR ...] [--retries R] [--wait-min M]
#                     [--recreate] [--logs DIR] [--dry-run] -- exectune sft --config F ...
#
# On every worker: the repository as it is here (git archive), a Python 3.11 virtual
# environment made by uv (TPU VM images ship Python 3.10; uv brings its own 3.11 without apt
# or root), `.[tpu]` installed with constraints.txt, and each --sync gs:// path copied to DIR
# in the checkout (gcloud storage rsync: a rerun copies only what changed), so model.path and
# task.options.path name the same local files everywhere. Every worker then runs the same
# command; jax.distributed finds the pod's hosts from the TPU environment. Each worker's
# output goes to LOGS/worker-<i>.log. When a run dies the script looks at the VM: READY again
# within --wait-min minutes means rerun (the run_dir checkpoint makes that a resume);
# PREEMPTED or TERMINATED means recreate it with --recreate, else stop with what to do. Put
# run_dir on storage every worker sees (a gs:// bucket via gcsfuse, or a Filestore mount).
# --dry-run prints every worker's commands instead of running them.
set -euo pipefail

name="" zone="" type="v5litepod-8" project="" create=0 spot=0 workers="" retries=3 logs="logs/tpu"
dry=0 wait_min=20 recreate=0 syncs=()
version="tpu-ubuntu2204-base" repo_dir="exectune-jax"

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --spot) spot=1; shift ;;
    --workers) workers="$2"; shift 2 ;;
    --sync) syncs+=("$2"); shift 2 ;;
    --retries) retries="$2"; shift 2 ;;
    --wait-min) wait_min="$2"; shift 2 ;;
    --recreate) recreate=1; shift ;;
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
for pair in "${syncs[@]}"; do
  if [[ "$pair" != gs://*=* ]]; then
    echo "tpu_pod.sh: --sync $pair must be gs://BUCKET/PATH=DIR (DIR relative to the checkout)" >&2
    exit 2
  fi
done

gc=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -n "$project" ]] && where+=(--project "$project")
printf -v cmd '%q ' "$@"

run() {
  if (( dry )); then printf '%q ' "$@"; echo; else "$@"; fi
}

state() { "${gc[@]}" describe "$name" "${where[@]}" --format='value(state)'; }

create_vm() {
  local flags=(--accelerator-type "$type" --version "$version")
  (( spot )) && flags+=(--spot)
  run "${gc[@]}" create "$name" "${where[@]}" "${flags[@]}"
}

# What each worker runs once: unpack, a Python 3.11 venv, the TPU install, the data copies.
setup="set -euo pipefail && mkdir -p ~/${repo_dir} && tar -xzf ~/${repo_dir}.tar.gz -C ~/${repo_dir}"
setup+=" && cd ~/${repo_dir} && python3 -m pip install -q --user 'uv>=0.5'"
setup+=" && ~/.local/bin/uv venv -q --allow-existing --python 3.11 .venv"
setup+=" && ~/.local/bin/uv pip install -q --python .venv/bin/python -c constraints.txt -e '.[tpu]'"
setup+=" && .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)'"
for pair in "${syncs[@]}"; do
  printf -v src '%q' "${pair%%=*}"
  printf -v dst '%q' "${pair#*=}"
  setup+=" && mkdir -p ${dst} && gcloud storage rsync --recursive ${src} ${dst}"
done

# One step on every worker, in parallel; any worker's failure fails the step.
on_workers() {
  local what="$1" remote="$2" pids=() w failed=0
  for ((w = 0; w < workers; w++)); do
    if (( dry )); then
      run "${gc[@]}" ssh "$name" "${where[@]}" --worker="$w" --command "$remote"
    else
      "${gc[@]}" ssh "$name" "${where[@]}" --worker="$w" --command "$remote" \
        >>"$logs/worker-$w.log" 2>&1 &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if (( failed )); then echo "tpu_pod.sh: $what failed on a worker; see $logs/worker-*.log" >&2; fi
  return "$failed"
}

prepare() {
  local w
  for ((w = 0; w < workers; w++)); do
    run "${gc[@]}" scp "$archive" "$name:~/" "${where[@]}" --worker="$w"
  done
  on_workers "setup" "$setup"
}

# Wait (bounded) for READY; a preempted or terminated VM never gets there by itself.
await_ready() {
  local deadline=$((SECONDS + wait_min * 60)) now
  while :; do
    now=$(state)
    case "$now" in
      READY) return 0 ;;
      PREEMPTED|TERMINATED)
        if (( recreate )); then
          echo "tpu_pod.sh: $name is $now; deleting and recreating it" >&2
          "${gc[@]}" delete "$name" "${where[@]}" --quiet
          create_vm
          prepare
          return 0
        fi
        echo "tpu_pod.sh: $name is $now and will not come back by itself; rerun this command with" \
          "--create --recreate (the run resumes from run_dir), or delete it:" \
          "gcloud compute tpus tpu-vm delete $name --zone $zone" >&2
        exit 3 ;;
    esac
    if (( SECONDS >= deadline )); then
      echo "tpu_pod.sh: $name still ${now:-unknown} after $wait_min minutes; check it with" \
        "gcloud compute tpus tpu-vm describe $name --zone $zone, then rerun" >&2
      exit 3
    fi
    sleep 30
  done
}

(( create )) && create_vm

if [[ -z "$workers" ]]; then
  if (( dry )); then
    workers=1
  else
    workers=$("${gc[@]}" describe "$name" "${where[@]}" --format='value(networkEndpoints.len())')
  fi
fi

(( dry )) || mkdir -p "$logs"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
archive="$scratch/${repo_dir}.tar.gz"
run git archive --format=tar.gz -o "$archive" HEAD
prepare

attempt=0
remote="cd ~/${repo_dir} && PATH=\$PWD/.venv/bin:\$PATH ${cmd}"
while :; do
  on_workers "the command" "$remote" && exit 0
  attempt=$((attempt + 1))
  if (( attempt > retries )); then
    echo "tpu_pod.sh: the command failed $attempt times; see $logs/worker-*.log" >&2
    exit 1
  fi
  echo "tpu_pod.sh: a worker failed (attempt $attempt); checking the VM, then resuming" >&2
  await_ready
done
