#!/usr/bin/env bash
# GPU check, one script: the loader benchmark with its stall fraction on the GPU (decoding in
# threads and in worker processes), then Horovod built with NCCL and training under horovodrun on
# the GPU (benchmarks/horovod_overhead.py, DECODE_IN=processes by default), then the CPU loaders
# beside Petastorm.
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Needs python3 with a CUDA build of torch, pyarrow and numpy (a GPU image usually has them), and
# pytest and numba (checked first). Optional, from a folder GPU_KIT (default .gpu/, made by
# scripts/gpu_kit.sh): whl/*.whl installed first (pydantic and the Horovod build's needs, for
# images without them), petastorm-py3.12.tar.xz (Petastorm on pyarrow 14, for a same-host
# comparison) and horovod-0.28.1.tar.gz, built with NCCL when horovod is not importable
# (CMAKE_POLICY_VERSION_MINIMUM: its bundled Gloo predates CMake 4). No network is used.
#
# Time: the whole script stays within GPU_CHECK_S seconds (default 540, what one H100's 15
# minutes of device time leave once the machine has started and the tree is copied). Each step
# runs under `timeout` with its own limit, or what is left of GPU_CHECK_S if that is less, and is
# skipped when under 20 s are left. Limits, in the order the steps run (each can be overridden):
#   kit wheels 30 s (KIT_S), checks 30 s (CHECKS_S), loader tests 60 s (TESTS_S),
#   loader benchmark 150 s (LOADER_S), Horovod build 180 s (HOROVOD_BUILD_S; it took about
#   120 s on 16 cores), Horovod training 90 s (HOROVOD_S), Petastorm 90 s (PETASTORM_S).
# The steps before Petastorm add up to 540 s at most, so the two measurements that matter most,
# the loader's GPU stall and a Horovod training epoch, always get their full limits; Petastorm,
# a CPU-only comparison, runs last on whatever time is left.
#
# Every step writes its log to OUT_DIR and ends with a line "PASS|FAIL|SKIP step (N s)"; a failed
# or timed-out step does not stop the next, a summary of all steps comes last, and the script
# exits 1 when any step failed. SKIP_LOADER, SKIP_HOROVOD and SKIP_PETASTORM leave out a part.
# LAUNCH_OPS=3000 adds the loader benchmark's CPU-only contention tables (left out by default).
# ROWS sets every dataset's size (default: 4M rows for the loader, 2M for Horovod, as measured
# in docs/benchmarks.md); HOROVOD_ROWS the training's alone.
set -uo pipefail
cd "$(dirname "$0")/.."
SELF=scripts/gpu_check.sh
export PYTHONUNBUFFERED=1 DLPIPE_HOME=${DLPIPE_HOME:-/tmp/dlpipe-gpu-home}
export KIT=${GPU_KIT:-.gpu} PY=${PYTHON:-python3}
export SITE=/tmp/dlpipe-gpu-site PK=/tmp/dlpipe-petastorm-site NCCL=/tmp/dlpipe-nccl

# -- the steps: each runs in a shell of its own, under timeout (see run_step) ---------------------

step_kit() {
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$KIT"/whl/*.whl
}

step_checks() {
  local rc=0
  nvidia-smi -L || rc=1
  nproc
  "$PY" -c "import torch, pyarrow, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| pyarrow', pyarrow.__version__, '| numpy', numpy.__version__); assert torch.cuda.is_available(), 'torch sees no GPU: the loader benchmark would leave out its GPU tables'" || rc=1
  "$PY" -c "import pytest, numba; print('pytest', pytest.__version__, '| numba', numba.__version__, '(compiled shuffle)')" \
    || { echo "pytest or numba is not importable: the loader tests cannot run, and without numba the shuffle's draw runs numpy's version, holding the GIL (expect stall)"; rc=1; }
  return $rc
}

step_loader_tests() {
  "$PY" -m pytest --noconftest -q -p no:cacheprovider tests/unit/test_loader.py tests/unit/test_scatter.py
}

step_loader() {
  # --launch-ops 0: the CPU stand-ins for a kernel-launching loop (about 40 s) give way to the real GPU stall
  "$PY" -m benchmarks.loader --rows "${ROWS:-4000000}" --workers "${LOADER_WORKERS:-12}" --repeats 2 \
    --launch-ops "${LAUNCH_OPS:-0}"
}

step_horovod_build() {
  local nccl_pkg cuda_home rc
  if "$PY" -c "import horovod.torch" 2>/dev/null; then echo "horovod is importable already: no build"; return 0; fi
  [ -f "$KIT/horovod-0.28.1.tar.gz" ] \
    || { echo "horovod is not importable and there is no $KIT/horovod-0.28.1.tar.gz to build (scripts/gpu_kit.sh makes it)"; return 1; }
  nccl_pkg=$("$PY" -c "import nvidia.nccl as m; print(list(m.__path__)[0])") \
    || { echo "no nvidia-nccl package for $PY: cannot build Horovod with NCCL"; return 1; }
  mkdir -p "$NCCL/lib"
  ln -sfn "$nccl_pkg/include" "$NCCL/include"
  ln -sf "$nccl_pkg"/lib/libnccl.so.* "$NCCL/lib/"
  ln -sf "$(ls "$nccl_pkg"/lib/libnccl.so.* | head -1)" "$NCCL/lib/libnccl.so"
  cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  echo "building horovod: CUDA at $cuda_home, NCCL from $nccl_pkg (log: horovod_build.txt)"
  CXX=$PWD/scripts/cxx17 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_GPU_OPERATIONS=NCCL \
  HOROVOD_NCCL_HOME=$NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_CUDA_HOME=$cuda_home HOROVOD_BUILD_CUDA_CC_LIST=90 \
  CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" LD_LIBRARY_PATH="$NCCL/lib:${LD_LIBRARY_PATH:-}" \
    "$PY" -m pip install --upgrade --no-build-isolation --no-deps --no-index \
      --target "$SITE" "$KIT/horovod-0.28.1.tar.gz" > "$OUT/horovod_build.txt" 2>&1
  rc=$?
  echo "build exit code $rc"; tail -n 15 "$OUT/horovod_build.txt"
  if ! PATH="$SITE/bin:$PATH" command -v horovodrun >/dev/null; then  # pip --target can leave out console scripts
    mkdir -p "$SITE/bin"
    printf '#!/usr/bin/env python3\nfrom horovod.runner.launch import run_commandline\nif __name__ == "__main__":\n    run_commandline()\n' > "$SITE/bin/horovodrun"
    chmod +x "$SITE/bin/horovodrun"
  fi
  ((rc == 0)) && "$PY" -c "import horovod.torch"  # the parent puts SITE and NCCL on the paths
}

step_horovod_train() {
  "$PY" -c "import horovod.torch as h; print('horovod imported; nccl built:', bool(h.nccl_built()), '| gloo built:', bool(h.gloo_built()))" \
    || { echo "horovod is not usable here (see the horovod_build step)"; return 1; }
  "$PY" -m benchmarks.horovod_overhead --rows "${HOROVOD_ROWS:-${ROWS:-2000000}}" --hidden 2048,2048 --batch 8192 \
    --epochs 1 --np 1 --decode-in "${DECODE_IN:-processes}"
}

step_petastorm() {
  [ -d "$PK/petastorm" ] || { mkdir -p "$PK" && tar -xJf "$KIT/petastorm-py3.12.tar.xz" -C "$PK"; } || return 1
  # the site puts numpy 1.26 first on the path: numba built for a newer numpy may not load beside it
  PYTHONPATH="$PK:${PYTHONPATH:-}" "$PY" -c "import numpy, numba; print('with the Petastorm site: numpy', numpy.__version__, '| numba', numba.__version__, '(compiled shuffle)')" \
    || echo "numba is not importable beside the Petastorm site's numpy: in this step ShardLoader's shuffle runs numpy's version (slower, holding the GIL), so its shuffled figures do not compare with the loader step's"
  PYTHONPATH="$PK:${PYTHONPATH:-}" "$PY" -m benchmarks.loader --rows "${ROWS:-4000000}" --workers "${LOADER_WORKERS:-12}" \
    --repeats 2 --launch-ops 0 --no-gpu --data /tmp/dlpipe-petastorm-bench
}

if [ "${1:-}" = "--step" ]; then "step_$2"; exit; fi  # one step, as run_step starts it

# -- running them -----------------------------------------------------------------------------

export OUT=${1:-${OUT:-/tmp/dlpipe-gpu-check}}
BUDGET=${GPU_CHECK_S:-540}
mkdir -p "$OUT"
RESULTS=()
FAILED=0

result() {  # STATUS NAME DETAIL: one line now, and again in the summary
  RESULTS+=("$1 $2 ($3)")
  echo "$1 $2 ($3)"
}

run_step() {  # NAME LIMIT_S LOG: step_NAME under timeout, its output in OUT/LOG and here; 0 if it passed
  local name=$1 limit=$2 log=$3 left start rc
  left=$((BUDGET - SECONDS))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 20)); then
    result SKIP "$name" "${left}s of the ${BUDGET}s budget left"
    return 1
  fi
  echo; echo "=== $name (limit ${limit}s, $(date +%T), ${SECONDS}s into the check)"
  start=$SECONDS
  # the process substitution, unlike a pipe, is not waited for: a straggler still holding the
  # output cannot keep the check from moving on
  timeout -k 5 "$limit" bash "$SELF" --step "$name" > >(tee "$OUT/$log") 2>&1
  rc=$?
  sleep 0.2  # lets tee print the step's last lines before its verdict
  if ((rc == 0)); then
    result PASS "$name" "$((SECONDS - start))s"
    return 0
  elif ((rc == 124 || rc == 137)); then
    result FAIL "$name" "$((SECONDS - start))s, stopped at its ${limit}s limit"
    FAILED=1
  else
    result FAIL "$name" "$((SECONDS - start))s, exit code $rc"
    FAILED=1
  fi
  return 1
}

skip() {  # NAME WHY
  echo; result SKIP "$1" "$2"
}

if ls "$KIT"/whl/*.whl >/dev/null 2>&1; then
  run_step kit "${KIT_S:-30}" kit.txt
  export PYTHONPATH="$SITE:${PYTHONPATH:-}" PATH="$SITE/bin:$PATH"
else
  skip kit "no wheels in $KIT/whl"
fi
run_step checks "${CHECKS_S:-30}" checks.txt

if [ -z "${SKIP_LOADER:-}" ]; then
  run_step loader_tests "${TESTS_S:-60}" loader_tests.txt
  run_step loader "${LOADER_S:-150}" loader.txt
else
  skip loader "SKIP_LOADER is set"
fi

if [ -n "${SKIP_HOROVOD:-}" ]; then
  skip horovod "SKIP_HOROVOD is set"
else
  # where the build installs Horovod, and the NCCL it links: on the paths of every later step
  case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE:${PYTHONPATH:-}" PATH="$SITE/bin:$PATH" ;; esac
  export LD_LIBRARY_PATH="$NCCL/lib:${LD_LIBRARY_PATH:-}"
  if run_step horovod_build "${HOROVOD_BUILD_S:-180}" horovod_build_step.txt; then
    run_step horovod_train "${HOROVOD_S:-90}" horovod_gpu.txt
  else
    skip horovod_train "no usable Horovod: see the horovod_build step"
  fi
fi

if [ -n "${SKIP_PETASTORM:-}" ]; then
  skip petastorm "SKIP_PETASTORM is set"
elif [ -f "$KIT/petastorm-py3.12.tar.xz" ]; then
  run_step petastorm "${PETASTORM_S:-90}" loader_petastorm.txt
else
  skip petastorm "no $KIT/petastorm-py3.12.tar.xz"
fi

echo; echo "=== summary: ${SECONDS}s of the ${BUDGET}s budget"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED
