#!/usr/bin/env bash
# GPU check, one script: the loader benchmark with its stall fraction on the GPU (decoding in
# threads and in worker processes), then Horovod built with NCCL and training under horovodrun on
# the GPU (benchmarks/horovod_overhead.py, DECODE_IN=processes by default).
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Needs python3 with a CUDA build of torch, pyarrow and numpy (a GPU image usually has them).
# Optional, from a folder GPU_KIT (default .gpu/, made by scripts/gpu_kit.sh): whl/*.whl installed
# first (pydantic and the Horovod build's needs, for images without them), petastorm-py3.12.tar.xz
# (Petastorm on pyarrow 14, for a same-host comparison) and horovod-0.28.1.tar.gz, built with NCCL
# when horovod is not importable (CMAKE_POLICY_VERSION_MINIMUM: its bundled Gloo predates CMake 4).
# Every step writes its log to OUT_DIR; a failed step is reported and the next one still runs.
# SKIP_LOADER, SKIP_PETASTORM and SKIP_HOROVOD leave out a part when device time is short; the
# loader benchmark (GPU stall, threads against processes) comes first because it matters most.
# LAUNCH_OPS=3000 adds the benchmark's CPU-only contention tables (left out by default there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/dlpipe-gpu-check}}
KIT=${GPU_KIT:-.gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DLPIPE_HOME=${DLPIPE_HOME:-/tmp/dlpipe-gpu-home}
step() { echo; echo "=== $1 ($(date +%T))"; }

step "machine"
nvidia-smi -L; nproc; "$PY" -c "import torch, pyarrow, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| pyarrow', pyarrow.__version__, '| numpy', numpy.__version__)"
"$PY" -c "import numba; print('numba', numba.__version__, '(compiled shuffle)')" 2>/dev/null \
  || echo "numba: not importable: the shuffle's draw runs numpy's version, holding the GIL (expect stall)"

SITE=/tmp/dlpipe-gpu-site
if ls "$KIT"/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KIT"/whl/*.whl
  export PYTHONPATH="$SITE:${PYTHONPATH:-}" PATH="$SITE/bin:$PATH"
fi

if [ -z "${SKIP_LOADER:-}" ]; then
step "loader tests, GPU delivery included; the compiled shuffle against numpy's on this host"
"$PY" -m pytest --noconftest -q -p no:cacheprovider tests/unit/test_loader.py tests/unit/test_scatter.py 2>&1 | tee "$OUT/loader_tests.txt"

step "loader benchmark (4M rows x 64 features, batch 8192)"
# --launch-ops 0: the CPU stand-ins for a kernel-launching loop (about 40 s here) give way to the real GPU stall
"$PY" -m benchmarks.loader --rows "${ROWS:-4000000}" --workers "${LOADER_WORKERS:-12}" --repeats 2 \
  --launch-ops "${LAUNCH_OPS:-0}" 2>&1 | tee "$OUT/loader.txt"
fi

if [ -f "$KIT/petastorm-py3.12.tar.xz" ] && [ -z "${SKIP_PETASTORM:-}" ]; then
step "Petastorm on this host: the CPU loaders again, all on pyarrow 14 (Petastorm needs pyarrow < 15)"
PK=/tmp/dlpipe-petastorm-site
[ -d "$PK/petastorm" ] || { mkdir -p "$PK" && tar -xJf "$KIT/petastorm-py3.12.tar.xz" -C "$PK"; }
PYTHONPATH="$PK:${PYTHONPATH:-}" "$PY" -m benchmarks.loader --rows "${ROWS:-4000000}" --workers "${LOADER_WORKERS:-12}" \
  --repeats 2 --launch-ops 0 --no-gpu --data /tmp/dlpipe-petastorm-bench 2>&1 | tee "$OUT/loader_petastorm.txt"
fi

[ -n "${SKIP_HOROVOD:-}" ] && { echo; echo "SKIP_HOROVOD is set: no Horovod build or training"; exit 0; }
step "horovod with NCCL"
if ! "$PY" -c "import horovod.torch" 2>/dev/null && [ -f "$KIT/horovod-0.28.1.tar.gz" ]; then
  NCCL_PKG=$("$PY" -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null)
  NCCL=/tmp/dlpipe-nccl
  mkdir -p "$NCCL/lib"
  ln -sfn "$NCCL_PKG/include" "$NCCL/include"
  ln -sf "$NCCL_PKG"/lib/libnccl.so.* "$NCCL/lib/"
  ln -sf "$(ls "$NCCL_PKG"/lib/libnccl.so.* | head -1)" "$NCCL/lib/libnccl.so"
  CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  echo "building horovod: CUDA at $CUDA_HOME, NCCL from $NCCL_PKG (capped at ${HOROVOD_BUILD_S:-420}s)"
  CXX=$PWD/scripts/cxx17 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_GPU_OPERATIONS=NCCL \
  HOROVOD_NCCL_HOME=$NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_CUDA_HOME=$CUDA_HOME HOROVOD_BUILD_CUDA_CC_LIST=90 \
  CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" LD_LIBRARY_PATH="$NCCL/lib:${LD_LIBRARY_PATH:-}" \
    timeout "${HOROVOD_BUILD_S:-420}" "$PY" -m pip install --upgrade --no-build-isolation --no-deps --no-index \
      --target "$SITE" "$KIT/horovod-0.28.1.tar.gz" > "$OUT/horovod_build.txt" 2>&1
  echo "build exit code $? (log: horovod_build.txt)"; tail -n 15 "$OUT/horovod_build.txt"
  export PYTHONPATH="$SITE:${PYTHONPATH:-}" PATH="$SITE/bin:$PATH" LD_LIBRARY_PATH="$NCCL/lib:${LD_LIBRARY_PATH:-}"
  if ! command -v horovodrun >/dev/null; then  # pip --target can leave out console scripts
    mkdir -p "$SITE/bin"
    printf '#!/usr/bin/env python3\nfrom horovod.runner.launch import run_commandline\nif __name__ == "__main__":\n    run_commandline()\n' > "$SITE/bin/horovodrun"
    chmod +x "$SITE/bin/horovodrun"
  fi
fi
"$PY" -c "import horovod.torch as h; print('horovod imported; nccl built:', bool(h.nccl_built()), '| gloo built:', bool(h.gloo_built()))" \
  || { echo "horovod is not usable here: skipping the horovodrun training run"; exit 0; }

step "training on the GPU: plain loop vs horovodrun -np 1 (MLP 2048-2048, batch 8192, decoding in ${DECODE_IN:-processes})"
"$PY" -m benchmarks.horovod_overhead --rows "${ROWS:-4000000}" --hidden 2048,2048 --batch 8192 --epochs 1 --np 1 \
  --decode-in "${DECODE_IN:-processes}" 2>&1 | tee "$OUT/horovod_gpu.txt"
