#!/usr/bin/env bash
# Run N processes of one command on this machine as a single multi-process JAX job.
#
#   launch/local.sh N [--devices K] [--port P] [--logs DIR] -- exectune sft ...
#
# Process i gets JAX_COORDINATOR_ADDRESS=127.0.0.1:P, JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i,
# which exectune_jax.parallel.init_distributed reads (CPU processes then talk over gloo).
# --devices K gives each process K simulated CPU devices (XLA_FLAGS, JAX_PLATFORMS=cpu): a
# laptop rehearsal of a multi-host run. P defaults to a free port.
# Each process logs to DIR/process<i>.log (default logs/local-<time>); process 0's log is also
# streamed here. When any process fails the others are stopped and the script exits with the
# first failure's status.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -eq 0 || "$1" == -h || "$1" == --help ]]; then usage; exit 0; fi
num="$1"; shift
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: the process count must be a positive integer, got '$num' (see --help)" >&2
  exit 2
fi
devices="" port="" logs="logs/local-$(date +%Y%m%d-%H%M%S)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --logs) logs="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "local.sh: a command after -- is required (see --help)" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
fi

mkdir -p "$logs"
rm -f "$logs"/process*.rc "$logs"/process*.rc.tmp "$logs"/process*.pid
common=("JAX_COORDINATOR_ADDRESS=127.0.0.1:$port" "JAX_NUM_PROCESSES=$num")
if [[ -n "$devices" ]]; then
  common+=("JAX_PLATFORMS=cpu"
           "XLA_FLAGS=${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices")
fi

# Each process runs under a small watcher that records its pid and exit status in files, so the
# loop below can tell who finished and stop the rest.
for ((i = 0; i < num; i++)); do
  (
    env "${common[@]}" "JAX_PROCESS_ID=$i" "$@" >"$logs/process$i.log" 2>&1 &
    echo "$!" >"$logs/process$i.pid"
    rc=0
    wait "$!" || rc=$?
    echo "$rc" >"$logs/process$i.rc.tmp" && mv "$logs/process$i.rc.tmp" "$logs/process$i.rc"
  ) &
done

stop_all() {
  for ((i = 0; i < num; i++)); do
    if [[ -f "$logs/process$i.pid" && ! -f "$logs/process$i.rc" ]]; then
      kill "$(cat "$logs/process$i.pid")" 2>/dev/null || true
    fi
  done
}
trap 'stop_all; wait; exit 130' INT TERM

touch "$logs/process0.log"
tail -n +1 -f "$logs/process0.log" &
streamer=$!

status=0 failed=""
while :; do
  finished=0
  for ((i = 0; i < num; i++)); do
    [[ -f "$logs/process$i.rc" ]] || continue
    finished=$((finished + 1))
    rc="$(cat "$logs/process$i.rc")"
    if [[ "$rc" != 0 && -z "$failed" ]]; then
      failed="$i" status="$rc"
    fi
  done
  # a process that died leaves the others blocked in collectives: stop them (again each round,
  # in case one had not started yet)
  [[ -n "$failed" ]] && stop_all
  (( finished == num )) && break
  sleep 0.2
done
kill "$streamer" 2>/dev/null || true
wait

for ((i = 0; i < num; i++)); do
  echo "local.sh: process $i exited $(cat "$logs/process$i.rc") (log: $logs/process$i.log)" >&2
done
rm -f "$logs"/process*.rc "$logs"/process*.pid
if [[ -n "$failed" ]]; then
  echo "local.sh: process $failed failed first; the last lines of its log:" >&2
  tail -n 20 "$logs/process$failed.log" >&2
fi
exit "$status"
