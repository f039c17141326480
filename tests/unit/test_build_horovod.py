"""scripts/build_horovod.sh when several setups run at once on one machine.

The compiler run itself is replaced: the venv's ``python`` and ``pip`` are small shell scripts
that answer the version questions and "build" a wheel by sleeping, logging each build. What is
real is the script's own logic: the wheelhouse lookup, the lock and the publication of the
wheel. (The real build takes minutes and is exercised by ``make setup``.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
# answers build_horovod.sh's questions as a venv with torch 2.13.0+cpu would, without horovod
case "$*" in
  -) exit 1 ;;                                   # the "already installed?" heredoc
  *torch.__version__*) echo 2.13.0_cpu ;;
  *version_info*) echo cp311 ;;
  *sysconfig*) echo "$FAKE_INCLUDE" ;;
  *) echo "[fake] $*" ;;
esac
"""

FAKE_PIP = """#!/usr/bin/env bash
# "pip wheel ... -w DIR" builds slowly and logs it; "pip install" records what it installed
if [ "$1" = wheel ]; then
  while [ $# -gt 0 ]; do [ "$1" = -w ] && out=$2; shift; done
  echo build >> "$BUILD_LOG"
  sleep 2
  mkdir -p "$out" && echo wheel > "$out/horovod-0.28.1-cp311-cp311-linux_x86_64.whl"
else
  echo "install $*" >> "$INSTALL_LOG"
fi
"""


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock (util-linux) is not installed")
def test_setups_started_together_build_horovod_once(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("pip", FAKE_PIP)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    include = tmp_path / "include"
    include.mkdir()
    (include / "Python.h").write_text("")
    env = {**os.environ, "DLPIPE_WHEELHOUSE": str(tmp_path / "wheels"), "FAKE_INCLUDE": str(include),
           "BUILD_LOG": str(tmp_path / "builds.log"), "INSTALL_LOG": str(tmp_path / "installs.log")}

    setups = [subprocess.Popen(["bash", str(REPO / "scripts" / "build_horovod.sh"), str(venv)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0] for p in setups]

    assert [p.returncode for p in setups] == [0, 0, 0], outputs
    assert (tmp_path / "builds.log").read_text().split() == ["build"], outputs
    assert sum("waiting for it" in out for out in outputs) >= 1, outputs
    wheels = list((tmp_path / "wheels").rglob("horovod-*.whl"))
    assert [w.name for w in wheels] == ["horovod-0.28.1-cp311-cp311-linux_x86_64.whl"]
    installs = (tmp_path / "installs.log").read_text().splitlines()
    assert sum("--force-reinstall" in line for line in installs) == 3, installs
