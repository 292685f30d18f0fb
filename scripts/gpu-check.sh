#!/usr/bin/env bash
# One script for a CUDA machine: the Hugging Face engine's figures on a GPU.
#   1. A random Llama of SmolLM2-135M's shape trains through the protocol in bf16, against a plain
#      PyTorch loop on the same model and batches (target: ≥ 0.9× its tokens/s).
#   2. The engine is SIGKILLed after a checkpoint and resumed; the weights must equal an
#      uninterrupted run's.
#   3. With two or more GPUs, FSDP over all of them (at most 8): tokens/s.
#   4. tfjs-node-gpu is built (scripts/build-tfjs-node.sh --gpu) where node and the registries are
#      reachable, and says which backend it loads.
# Prints one JSON line per part. Needs python with torch (CUDA), transformers and peft: the
# project's .tools/venv, DACP_PYTHON, or python3. `--smoke` checks the script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${DACP_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .tools/venv/bin/python ]; then python=.tools/venv/bin/python; else python=python3; fi
fi
"$python" -c 'import torch, transformers, peft' 2>/dev/null \
  || { echo "gpu-check: $python cannot import torch, transformers and peft (bash scripts/setup-python.sh, or set DACP_PYTHON)" >&2; exit 2; }

"$python" scripts/gpu_check.py "$@"
status=$?
# 2: the check could not run here (no CUDA device, bad arguments); build nothing either.
[ "$status" -eq 2 ] && exit 2

if [ "${1:-}" = --smoke ]; then
  echo '{"tfjsNodeGpu": "skipped: --smoke"}'
elif ! command -v node >/dev/null 2>&1; then
  echo '{"tfjsNodeGpu": "not built: no node on this machine"}'
elif out=$(bash scripts/build-tfjs-node.sh --gpu 2>&1); then
  backend=$(TF_CPP_MIN_LOG_LEVEL=2 DACP_TF_BACKEND=node-gpu node -e "require('./dist/ml/backend').initBackend().then(b => console.log(require('./dist/ml/backend').describeBackend(b)))" 2>&1 | tail -n 1)
  printf '{"tfjsNodeGpu": %s}\n' "$(node -e 'console.log(JSON.stringify(process.argv[1]))' "built; $backend")"
else
  printf '{"tfjsNodeGpu": %s}\n' "$(node -e 'console.log(JSON.stringify(process.argv[1]))' "not built: $(echo "$out" | tail -n 1)")"
fi
exit $status
