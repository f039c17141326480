"""Lineage: the chain of manifests behind a registered model version."""

from __future__ import annotations

from dlpipe import commit
from dlpipe.errors import NotCommittedError


def manifest_tree(mid: str, depth: int = 0, max_depth: int = 16) -> dict:
    """A manifest and, recursively, the manifests it was computed from."""
    try:
        m = commit.load_manifest(mid)
    except NotCommittedError:
        return {"id": mid, "missing": True}
    node = {
        "id": m["id"], "stage": m["stage"], "fingerprint": m["fingerprint"],
        "committed_at": m["committed_at"], "run": {k: m["run"][k] for k in ("dag_id", "run_id", "task_id", "try_number")},
        "files": [{"path": f["path"], "sha256": f["sha256"]} for f in m["outputs"]["files"] if not f["path"].endswith(".json")],
        "summary": {k: v for k, v in m["summary"].items() if k in ("rows", "metrics", "verdict", "window", "day")},
    }
    if depth < max_depth:
        node["inputs"] = [manifest_tree(i["id"], depth + 1, max_depth) for i in m["inputs"]]
    return node


def model_lineage(training_id: str, gate_ids: list[str]) -> dict:
    """The lineage block stored in a registry record (small: ids and hashes, not trees)."""
    training = commit.load_manifest(training_id)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    features = [commit.load_manifest(i["id"]) for i in dataset["inputs"]]
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
    }
