"""Lineage: the chain of manifests behind a registered model version, checked as it is read."""

from __future__ import annotations

from pathlib import Path

from dlpipe import commit
from dlpipe.errors import IntegrityError, NotCommittedError


def manifest_problems(m: dict, mid: str, expected: str | None, verify_files: bool,
                      expected_seal: str | None = None) -> list[str]:
    """What makes a manifest untrustworthy as a link of a lineage: a fingerprint its own stage,
    inputs, config and code no longer give, or a seal its other fields no longer give (edited
    after its commit), a fingerprint or seal that is not the one its consumer recorded, one not
    in its id, and with ``verify_files`` a file whose bytes are not the ones it lists. A
    manifest committed before seals (2026-12-07) has its outputs, summary and run uncovered."""
    problems = []
    fp = m["fingerprint"]
    if fp not in commit.recomputed_fingerprints(m):
        problems.append("edited after its commit: its stage, inputs, config and code do not give its fingerprint")
    if commit.seal_broken(m):
        problems.append("edited after its commit: its outputs, summary, code record and run do not give its seal")
    if expected_seal is not None and m.get("seal") != expected_seal:
        problems.append(f"its seal {str(m.get('seal'))[:16]} is not the {expected_seal[:16]} its consumer recorded")
    if not fp.startswith(mid.rpartition("@")[2]) or m["id"] != mid.partition("@")[0] + "@" + fp[:16]:
        problems.append(f"its fingerprint {fp[:16]} is not the one in its id {mid}")
    if expected is not None and fp != expected:
        problems.append(f"its fingerprint {fp[:16]} is not the {expected[:16]} its consumer was computed from")
    if verify_files:
        try:
            commit.verify(m)
        except IntegrityError as exc:
            problems.append(str(exc))
    return problems


def checked_manifest(mid: str, *, expected: str | None = None, verify_files: bool = False,
                     expected_seal: str | None = None) -> tuple[dict | None, dict]:
    """(the manifest, or None when it cannot be used, and its status: ``problems``, and
    ``missing`` when no commit holds it), as a lineage shows one link."""
    try:
        m = commit.load_manifest(mid)
    except NotCommittedError as exc:
        return None, {"missing": True, "problems": [str(exc)]}
    except (OSError, ValueError, IntegrityError) as exc:  # a torn or unreadable file (read_manifest)
        return None, {"problems": [f"manifest unreadable: {type(exc).__name__}: {exc}"]}
    try:
        return m, {"problems": manifest_problems(m, mid, expected, verify_files, expected_seal)}
    except (KeyError, TypeError) as exc:
        return None, {"problems": [f"not a dlpipe manifest: no field {exc}"]}


def manifest_tree(mid: str, depth: int = 0, max_depth: int = 16, *, expected: str | None = None,
                  verify_files: bool = False, expected_seal: str | None = None) -> dict:
    """A manifest and, recursively, the manifests it was computed from; each node lists its
    ``problems`` (none: the link holds), so a tampered or missing link is never shown as sound."""
    m, status = checked_manifest(mid, expected=expected, verify_files=verify_files, expected_seal=expected_seal)
    if m is None:
        return {"id": mid, **status}
    try:
        node = {
            "id": m["id"], "stage": m["stage"], "fingerprint": m["fingerprint"],
            "committed_at": m["committed_at"], "sealed": bool(m.get("seal")),
            # who ran it, with which code and config: what an auditor asks of every link
            "run": {k: m["run"].get(k) for k in ("dag_id", "run_id", "task_id", "try_number", "user", "host",
                                                  "triggered_by", "run_type", "reason")},
            "config": m["config"],
            "code": {k: v for k, v in m["code"].items() if k != "packages"},
            "files": [{"path": f["path"], "sha256": f["sha256"]} for f in m["outputs"]["files"]
                      if not f["path"].endswith(".json")],
            "summary": {k: v for k, v in m["summary"].items() if k in ("rows", "metrics", "verdict", "window", "day")},
            **status,
        }
    except (KeyError, TypeError) as exc:
        return {"id": mid, "problems": [f"not a dlpipe manifest: no field {exc}"]}
    if depth < max_depth:
        node["inputs"] = [manifest_tree(i["id"], depth + 1, max_depth, expected=i["fingerprint"],
                                        verify_files=verify_files, expected_seal=i.get("seal"))
                          for i in m["inputs"]]
    return node


def unsealed(node: dict | None) -> list[str]:
    """Ids of the manifests in a tree committed before seals: their fingerprints are checked,
    their summary, run and file list are not."""
    if node is None:
        return []
    found = [node["id"]] if "run" in node and not node.get("sealed") else []
    for child in node.get("inputs", []):
        found += unsealed(child)
    return found


def tree_problems(node: dict | None) -> list[str]:
    """Every problem in a tree, each with the id of the manifest it concerns."""
    if node is None:
        return []
    found = [f"{node['id']}: {p}" for p in node.get("problems", [])]
    for child in node.get("inputs", []):
        found += tree_problems(child)
    return found


def model_files(training: dict) -> dict[str, dict]:
    """The model files a training committed (its manifest's file entries), by their name inside
    its model directory: what registering sends, and what a registered version must hold."""
    model_dir = training["summary"].get("model_dir", "")
    return {f["path"].split("/", 1)[1]: f for f in training["outputs"]["files"]
            if f["path"].startswith(model_dir + "/")}


def judged(gate: dict) -> str | None:
    """What a gate judged: its first input; the rest are references (a data gate's drift
    baseline is the previous dataset)."""
    return gate["inputs"][0]["id"] if gate["inputs"] else None


def vouches_for(gate: dict, training: dict) -> bool:
    """Whether a gate judged this training (the model gate) or the dataset it trained on (the
    data gate): a passed verdict on another model (a stale XCom after a task was cleared, a
    miswired DAG) must not let this one through."""
    return judged(gate) in {training["id"], *(i["id"] for i in training["inputs"])}


def model_lineage(training_id: str, gate_ids: list[str]) -> dict:
    """The lineage block stored in a registry record (small: ids and hashes, not trees)."""
    training = commit.load_manifest(training_id)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    features = [commit.load_manifest(i["id"]) for i in dataset["inputs"]]
    # Under the model fingerprint: the training manifest as it was when it was registered; its
    # seal covers its input entries' seals, and each of those the next one down. (Only the
    # training's: a dataset re-materialized under the same id must not make its committed
    # training another model, registered twice.) Left out for a training committed before
    # seals, so a rerun finds the version registered before.
    seals = {training["id"]: training["seal"]} if "seal" in training else {}
    return {
        "training": training["id"],
        "dataset": dataset["id"],
        "dataset_fingerprint": dataset["fingerprint"],
        "feature_partitions": [f["id"] for f in features],
        "raw_partitions": sorted({i["id"] for f in features for i in f["inputs"]}),
        "gates": gate_ids,
        # the verdicts and their evidence summaries travel with the version
        "gate_verdicts": {gid: commit.load_manifest(gid)["summary"] for gid in gate_ids},
        "config": {"train": training["config"], "dataset": dataset["config"]},
        "code": training["code"],
        "trained_by": training["run"],
        **({"seals": seals} if seals else {}),
    }


def openlineage_dataset(ref: str, *, home: Path, registry_uri: str) -> tuple[str, str, str | None]:
    """(namespace, name, version) of a manifest id or registry reference, named as OpenLineage
    names datasets: where the data lives, so two deployments (or a local and an S3 registry)
    never report the same dataset. A committed stage partition is a directory (namespace
    ``file``, its absolute path); a registry model or alias lives under the registry root
    (``s3://bucket`` and ``prefix/eta`` on S3, ``file`` and the directory's path locally). The
    version is the fingerprint, or the registry version; an alias has none."""
    name, _, version = ref.partition("@")
    if "/" in name:  # features/eta/dt=2026-01-03@<fingerprint>
        return "file", f"{home}/{name}", version or None
    if registry_uri.startswith("s3://"):
        bucket, _, prefix = registry_uri[len("s3://"):].partition("/")
        return f"s3://{bucket}", "/".join(p for p in (prefix.strip("/"), name) if p), version or None
    return "file", f"{Path(registry_uri.removeprefix('file://')).expanduser().resolve()}/{name}", version or None
