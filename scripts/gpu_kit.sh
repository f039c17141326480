#!/usr/bin/env bash
# Builds the kit that scripts/gpu_check.sh takes to a GPU host with no network (default .gpu/,
# git-ignored; carry it with the working tree). Needs network here. Idempotent: present files are kept.
#
#   scripts/gpu_kit.sh [KIT_DIR]        (PYVER=3.12: the GPU image's Python)
#
# - whl/: pydantic and the Horovod build's Python needs, for the GPU image's Python;
# - horovod-0.28.1.tar.gz: built there with NCCL by gpu_check.sh;
# - petastorm-py$PYVER.tar.xz: petastorm 0.13.1 with pyarrow 14, numpy 1.26 and pandas 2.1 as one
#   site folder (tests, headers and Arrow Flight/Substrait removed, xz-compressed to fit the 64 MiB
#   carry limit), so the loader benchmark can compare with Petastorm on the GPU host, whose own
#   pyarrow is too new for it.
# numba is not in the kit (llvmlite's wheel alone is 60 MB): the H200 image has it. Where it is
# missing, the shuffle's draw runs training/scatter.py's numpy version (50-60 ms a window, in
# Python, holding the GIL: it would show as stall), and gpu_check.sh's checks step fails and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-.gpu}
PYVER=${PYVER:-3.12}
TAG=cp${PYVER/./}
PIP=(.venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version "$PYVER"
     --implementation cp --abi "$TAG" --abi abi3 --abi none --platform manylinux2014_x86_64
     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
mkdir -p "$KIT/whl"

"${PIP[@]}" -q -d "$KIT/whl" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 cffi==2.1.1 pycparser==3.12
[ -f "$KIT/horovod-0.28.1.tar.gz" ] || \
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$KIT" horovod==0.28.1

PK="$KIT/petastorm-py$PYVER.tar.xz"
if [ ! -f "$PK" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "${PIP[@]}" -q -d "$tmp/whl" numpy==1.26.4 pyarrow==14.0.2 pandas==2.1.4 python-dateutil==2.9.0.post0 \
    pytz tzdata six petastorm==0.13.1 dill diskcache fsspec future packaging psutil pyzmq cloudpickle setuptools
  mkdir "$tmp/site"
  for w in "$tmp"/whl/*.whl; do .venv/bin/python -m zipfile -e "$w" "$tmp/site/"; done
  (cd "$tmp/site" && rm -rf pandas/tests pyarrow/tests pyarrow/include pyarrow/src numpy/tests numpy/*/tests \
     pyarrow/libarrow_flight.so* pyarrow/_flight*.so pyarrow/libarrow_substrait.so* pyarrow/_substrait*.so &&
   find . \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.cc' \) -delete)
  echo "[gpu_kit] compressing the petastorm site (about a minute)"
  tar -C "$tmp/site" -cf - . | xz -T0 -6 > "$PK.part"
  mv "$PK.part" "$PK"
fi
du -sh "$KIT"
