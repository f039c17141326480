#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 with PyTorch + Gloo into the given venv.
#
# Why a script: horovod 0.28.1 is the last release and its CMake forces -std=c++14, while
# torch >= 2.1 headers need C++17. We build the sdist with a compiler wrapper (scripts/cxx17)
# that rewrites -std=c++14 to -std=c++17 and includes the headers newer GCCs stopped pulling in. The built wheel is kept in a wheelhouse keyed by Python and torch
# version, so a fresh clone or a recreated venv on the same machine installs it in seconds.
set -euo pipefail

VENV=${1:?usage: build_horovod.sh VENV_DIR}
PY="$VENV/bin/python"
HOROVOD_VERSION=0.28.1

if "$PY" -c "import horovod.torch" 2>/dev/null; then
  echo "[setup] horovod already installed in $VENV: skipping build"
  exit 0
fi

TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
PY_TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
WHEELHOUSE=${DLPIPE_WHEELHOUSE:-$HOME/.cache/dlpipe/wheels}/horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION-$PY_TAG
mkdir -p "$WHEELHOUSE"

if ! ls "$WHEELHOUSE"/horovod-*.whl >/dev/null 2>&1; then
  echo "[setup] building horovod $HOROVOD_VERSION against torch $TORCH_VERSION (2-7 min on 2 cores, once per machine)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # Build requirements must already be in the venv: --no-build-isolation compiles against the
  # installed torch.
  "$VENV/bin/pip" install -q cffi cloudpickle psutil pyyaml packaging wheel "setuptools>=70"
  CXX="$(cd "$(dirname "$0")" && pwd)/cxx17" \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
  MAKEFLAGS="-j$(nproc)" \
    "$VENV/bin/pip" wheel --no-build-isolation --no-deps --no-binary horovod \
      -w "$WORK/out" "horovod==$HOROVOD_VERSION" 2>&1 | tail -n 20
  mv "$WORK"/out/horovod-*.whl "$WHEELHOUSE"/
fi

"$VENV/bin/pip" install -q --no-deps "$WHEELHOUSE"/horovod-*.whl
"$PY" -c "import horovod.torch as hvd; print('[setup] horovod', hvd.__version__ if hasattr(hvd,'__version__') else 'ok', 'gloo built:', hvd.gloo_built())"
