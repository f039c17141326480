#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 with PyTorch + Gloo into the given venv.
#
# Why a script: horovod 0.28.1 is the last release and its CMake forces -std=c++14, while
# torch >= 2.1 headers need C++17. We build the sdist with a compiler wrapper (scripts/cxx17)
# that rewrites -std=c++14 to -std=c++17 and includes the headers newer GCCs stopped pulling in. The built wheel is kept in a wheelhouse keyed by Python and torch
# version (local tag included), so a fresh clone or a recreated venv on the same machine installs it in seconds.
set -euo pipefail

VENV=${1:?usage: build_horovod.sh VENV_DIR}
PY="$VENV/bin/python"
HOROVOD_VERSION=0.28.1

# Installed and built against this very torch (Horovod records it in metadata.json; against
# another torch it may still import, with only a warning, and then crash in its extension).
if "$PY" - 2>/dev/null <<'PYEOF'
import json, pathlib, sys
import torch
import horovod
import horovod.torch  # noqa: F401  (the extension loads)
meta = json.loads((pathlib.Path(horovod.__file__).parent / "metadata.json").read_text())
sys.exit(0 if meta.get("pytorch") == torch.__version__ else 1)
PYEOF
then
  echo "[setup] horovod already installed in $VENV: skipping build"
  exit 0
fi

# The full torch version, local tag included: a +cpu build must not serve a +cu130 torch.
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.replace('+', '_'))")
PY_TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
WHEELHOUSE=${DLPIPE_WHEELHOUSE:-$HOME/.cache/dlpipe/wheels}/horovod-$HOROVOD_VERSION-torch-$TORCH_VERSION-$PY_TAG
mkdir -p "$WHEELHOUSE"

# One build per machine, even when several setups start at once (CI jobs or clones sharing a
# home): the others wait here for the wheel instead of compiling it again beside it.
if command -v flock >/dev/null; then
  exec 9>"$WHEELHOUSE/.lock"
  if ! flock -n 9; then
    echo "[setup] another setup is building or installing horovod from $WHEELHOUSE: waiting for it (lock $WHEELHOUSE/.lock)"
    flock 9
  fi
fi

if ! ls "$WHEELHOUSE"/horovod-*.whl >/dev/null 2>&1; then
  # the compiler, CMake and Python's headers: missing, the build fails minutes in, deep in pip's output
  missing=""
  command -v c++ >/dev/null || missing="$missing g++"
  command -v cmake >/dev/null || missing="$missing cmake"
  [ -f "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || missing="$missing python3-dev"
  if [ -n "$missing" ]; then
    echo "[setup] error: building Horovod needs:$missing; on Debian: apt-get install -y$missing" >&2
    exit 1
  fi
  echo "[setup] building horovod $HOROVOD_VERSION against torch $TORCH_VERSION (2-7 min on 2 cores, once per machine)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # Build requirements must already be in the venv: --no-build-isolation compiles against the
  # installed torch.
  "$VENV/bin/pip" install -q -c "$(dirname "$0")/../requirements/constraints.txt" \
    cffi cloudpickle psutil pyyaml packaging "wheel==0.48.0" "setuptools==84.2.1"
  CXX="$(cd "$(dirname "$0")" && pwd)/cxx17" \
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
  MAKEFLAGS="-j$(nproc)" \
    "$VENV/bin/pip" wheel --no-build-isolation --no-deps --no-binary horovod \
      -w "$WORK/out" "horovod==$HOROVOD_VERSION" 2>&1 | tail -n 20
  # copied under a name the lookup above ignores, then renamed: an interrupted copy (the
  # wheelhouse may be on another file system) never passes for a built wheel
  built=$(ls "$WORK"/out/horovod-*.whl)
  cp "$built" "$WHEELHOUSE/.partial.$$"
  mv "$WHEELHOUSE/.partial.$$" "$WHEELHOUSE/$(basename "$built")"
fi

# --force-reinstall: the same horovod version built against an older torch may be installed,
# and pip would otherwise keep it
"$VENV/bin/pip" install -q --no-deps --force-reinstall "$WHEELHOUSE"/horovod-*.whl
"$PY" -c "import horovod.torch as hvd; print('[setup] horovod', hvd.__version__ if hasattr(hvd,'__version__') else 'ok', 'gloo built:', hvd.gloo_built())"
