#!/usr/bin/env bash
# Optional native TensorFlow backend for the built-in engine, built from source.
#
# @tensorflow/tfjs-node's own install script downloads libtensorflow from Google's storage. Where
# that is unreachable, this builds its addon against the TensorFlow C library and headers that the
# `tensorflow-cpu` wheel on PyPI carries (x86_64 Linux; needs pip, python3, g++/make and node).
# It installs tfjs-node into node_modules without adding it to package.json; dacp then picks the
# `tensorflow` backend automatically (DACP_TF_BACKEND overrides). About 200 MB download, 600 MB on disk.
#
# `--gpu` builds @tensorflow/tfjs-node-gpu the same way against the GPU build of the wheel
# (`tensorflow`, about 600 MB; it needs the CUDA 12 libraries at run time, e.g. from
# `pip install tensorflow[and-cuda]==2.16.2`). dacp tries it first and says why when it cannot load.
# npm prunes packages that package.json does not name, so building one removes the other.
set -euo pipefail
cd "$(dirname "$0")/.."
TFJS_NODE_VERSION="${TFJS_NODE_VERSION:-4.22.0}"
TF_VERSION="${TF_VERSION:-2.16.2}"
NAME=tfjs-node
WHEEL=tensorflow-cpu
if [ "${1:-}" = --gpu ]; then
  NAME=tfjs-node-gpu
  WHEEL=tensorflow
fi
PKG=node_modules/@tensorflow/$NAME

if node -e "require('@tensorflow/$NAME')" >/dev/null 2>&1; then
  echo "$NAME: already built"
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "build-tfjs-node: only x86_64 Linux is supported (tensorflow-cpu wheel layout)" >&2; exit 1; }

npm install --no-save --ignore-scripts --no-audit --no-fund "@tensorflow/$NAME@${TFJS_NODE_VERSION}" >/dev/null
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
  -d "$wheel_dir" "${WHEEL}==${TF_VERSION}"
wheel=$(ls "$wheel_dir"/"${WHEEL//-/_}"-"${TF_VERSION}"-*.whl)

rm -rf "$PKG/deps" "$PKG/build" "$PKG"/build-tmp-napi-* "$PKG/lib"
mkdir -p "$PKG/deps/lib" "$PKG/deps/include"
python3 - "$wheel" "$PKG/deps" <<'PY'
import os, shutil, sys, zipfile
wheel, deps = sys.argv[1], sys.argv[2]
inc = 'tensorflow/include/'
wanted = ('tensorflow/c/', 'tensorflow/core/platform/ctstring', 'tsl/platform/ctstring',
          'tensorflow/tsl/platform/ctstring', 'xla/tsl/c/', 'tsl/c/')
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith('/'):
            continue
        if name in ('tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2'):
            target = os.path.join(deps, 'lib', os.path.basename(name))
        elif name.startswith(inc) and name[len(inc):].startswith(wanted):
            target = os.path.join(deps, 'include', name[len(inc):])
        else:
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, 'wb') as dst:
            shutil.copyfileobj(src, dst)
PY
# binding.gyp links -ltensorflow: in the wheel the C API lives in libtensorflow_cc.so.2.
ln -sf libtensorflow_cc.so.2 "$PKG/deps/lib/libtensorflow.so"
ln -sf libtensorflow_framework.so.2 "$PKG/deps/lib/libtensorflow_framework.so"
# Node's own headers (e.g. /usr/include/node), so node-gyp downloads nothing.
nodedir="${NODEDIR:-$(dirname "$(dirname "$(command -v node)")")}"
(cd "$PKG" && ../../.bin/node-pre-gyp rebuild --build-from-source --build-latest-napi-version-only --nodedir="$nodedir" >/dev/null)
rm -rf "$PKG"/build-tmp-napi-* "$PKG/build"
TF_CPP_MIN_LOG_LEVEL=2 node -e "const tf=require('@tensorflow/$NAME');console.log('$NAME: built, backend', tf.getBackend(), 'on TensorFlow', tf.backend().binding.TF_Version)"
