#!/usr/bin/env bash
# Sets up the project-local Python for the PyTorch reference trainer (trainers/reference/):
# a venv in .tools/venv with torch (CPU build). Idempotent: does nothing when torch is already there.
# Override the interpreter with PYTHON=..., the torch requirement with DACP_TORCH_REQUIREMENT=...
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
python="${PYTHON:-python3}"
requirement="${DACP_TORCH_REQUIREMENT:-torch==2.13.0}"
wanted="${requirement#torch==}"

fail() { echo "setup-python: $*" >&2; exit 1; }

has_torch() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$wanted" <<'EOF' >/dev/null 2>&1
import sys
import torch
# "2.13.0+cpu" counts as 2.13.0
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
}

if ! has_torch; then
  command -v "$python" >/dev/null 2>&1 || fail "$python not found; install Python ≥ 3.10 or set PYTHON=/path/to/python3"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || fail "$("$python" --version 2>&1) is too old; the reference trainer needs Python ≥ 3.10"
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$root/.tools"
    "$python" -m venv "$venv" >&2 || fail "could not create $venv ('$python -m venv' failed; on Debian: apt-get install python3-venv)"
  fi
  # DACP_PIP_ARGS adds pip options, e.g. "--index-url https://download.pytorch.org/whl/cpu" for the
  # CPU-only build where pip would otherwise pick the multi-GB CUDA one.
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet ${DACP_PIP_ARGS:-} "$requirement" >&2 \
    || fail "pip could not install $requirement into $venv (see the pip output above)"
  has_torch || fail "$venv/bin/python still cannot import $requirement"
fi

echo "$venv/bin/python"
