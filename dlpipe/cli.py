"""The ``dlpipe`` command: demo data, registry, lineage, audit trail and run summaries.

Tables for people by default, ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
from datetime import date
from typing import Any, Iterator, Sequence

from dlpipe import audit, commit, registry, settings
from dlpipe.errors import ConfigError, DlpipeError, IntegrityError, NotCommittedError, redacted
from dlpipe.lineage import (checked_manifest, judged, manifest_tree, model_files, tree_problems, unsealed,
                            vouches_for)
from dlpipe.runctx import RunContext, cli_context
from dlpipe.storage import endpoint_url, open_store, s3_config, shown_url


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _shown(value: Any) -> str:
    """``value`` for a terminal: control characters escaped. A run's reason or an error is
    anyone's text; a newline or an escape sequence in it could forge lines of the output."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_shown(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _print(obj: Any, as_json: bool, human: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str) if as_json else human)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from dlpipe.demo_data import DemoDataConfig, write_raw

    cfg = DemoDataConfig(start=args.start, days=args.days,
                         rows_per_day=args.rows_per_day, seed=args.seed)
    results = write_raw(cfg, cli_context("demo-data"))
    rows = [{"partition": r.manifest["partition"], "rows": r.manifest["summary"]["rows"],
             "status": _raw_status(r), "manifest": r.id} for r in results]
    _print(rows, args.json, _table(rows, ["partition", "rows", "status", "manifest"]))
    return 0


def cmd_ingest_raw(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dlpipe.raw_ingest import commit_raw_files

    result = commit_raw_files(args.name, args.day, [Path(p) for p in args.paths], cli_context("ingest-raw"))
    row = {"partition": f"{args.name}/{result.manifest['partition']}", "rows": result.manifest["summary"]["rows"],
           "status": _raw_status(result), "manifest": result.id}
    _print(row, args.json, _table([row], ["partition", "rows", "status", "manifest"]))
    return 0


def _raw_status(result) -> str:
    """'committed' or 'skipped (exists)', and what a new commit supersedes: a day committed
    again with other settings, files or code replaces the version readers took until then."""
    if result.skipped:
        return "skipped (exists)"
    replaced = result.manifest["config"].get("replaces")
    if not replaced:
        return "committed"
    old, new = commit.load_manifest(replaced), result.manifest
    same = commit.without_replaces(old["config"]) == commit.without_replaces(new["config"])
    why = "the same settings, older code" if same else _settings(old)
    return f"committed: supersedes the version of {why} (readers take the newest)"


def _settings(manifest: dict) -> str:
    """A raw day version in a few words: demo data by its settings, ingested files by their rows."""
    c = manifest["config"]
    if "seed" in c:
        return f"seed {c['seed']}, {c.get('rows_per_day')} rows"
    return f"{manifest['summary'].get('rows')} rows in {len(c.get('files', {}))} file(s), committed {manifest['committed_at']}"


def _store(args: argparse.Namespace):
    root = args.root or settings.registry_root()
    client = None
    if root.startswith("s3://") and getattr(args, "endpoint_url", None):
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint_url(args.endpoint_url), config=s3_config())
    return open_store(root, client)  # S3Store refuses an endpoint from the environment with a login


@contextlib.contextmanager
def _audited(command: str, target: str) -> Iterator[RunContext]:
    """The context of a registry change made by hand; a refused or failed one leaves a 'failed'
    event too (a compare-and-swap conflict, a version that does not exist), as a task's does."""
    run = cli_context(command)
    audit.check_writable()  # before the change: not applied, then reported as failed
    try:
        yield run
    except Exception as exc:
        audit.failed(exc, stage="registry", run=run, manifest_id=target)
        raise


def cmd_registry_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    metrics = _metrics_file(Path(args.metrics)) if args.metrics else {}
    with _audited("registry register", f"{args.name}@?") as run:  # an S3 refusal of the first read too
        store = _store(args)
        fresh = not store.has_keys()  # a misspelt --root makes a second registry: say so (one request)
        record, created = registry.register(
            store, args.name, Path(args.model_dir), metrics=metrics,
            lineage={"source": "external", "registered_from": "dlpipe registry register"},
            run=run, note=args.note or "")
    ref = f"{record['name']}@{record['version']}"
    said = f"{ref} {'registered' if created else 'already registered (identical model)'}"
    if not created and (metrics and metrics != record.get("metrics") or args.note and args.note != record.get("note")):
        said += (f"; its recorded metrics and note are kept (a version record never changes): the ones given "
                 f"differ (see `dlpipe registry show {ref}`)")
    if fresh:
        said += (f"\nnote: {store.uri} held no registry before this: it is a new one (check --root and "
                 f"DLPIPE_REGISTRY_ROOT if you meant an existing registry)")
    _print(record, args.json, said)
    return 0


def _metrics_file(path) -> dict:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("--metrics", str(path), "no such file; give a JSON file of metrics") from None
    except IsADirectoryError:
        raise ConfigError("--metrics", str(path), "a directory; give a JSON file of metrics") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--metrics", str(path), f"not JSON ({exc}); give a JSON object such as "
                                                  '{"val_mae": 3.7}') from None
    if not isinstance(metrics, dict):
        raise ConfigError("--metrics", str(path), 'give a JSON object such as {"val_mae": 3.7}')
    for key, value in _numbers(metrics):  # JSON has no NaN: the version record would not be JSON
        if not math.isfinite(value):
            raise ConfigError(f"--metrics {key}", value, "give a finite number, or leave the metric out")
    return metrics


def _numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    """Every float in nested metrics, with its dotted path (``eval.mae``)."""
    if isinstance(value, float):
        return [(path, value)]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _numbers(v, f"{path}[{i}]")]
    return []


def cmd_registry_history(args: argparse.Namespace) -> int:
    name, alias = registry.parse_alias_ref(args.ref, default="production")
    store = _store(args)
    doc = registry.get_alias(store, name, alias)
    if doc is None and not registry.list_versions(store, name):  # a misspelt name, not an unset alias
        raise ConfigError("model", name, f"no version of it is registered in {store.uri}; "
                                         f"see `dlpipe registry list`")
    if doc is None:  # never set (or misspelt): say so, and which aliases are set
        others = registry.list_aliases(store, name)
        _print({}, args.json, f"{name}:{alias} has never been set; the aliases of {name} that are set: "
                              f"{', '.join(others) or '(none)'}")
        return 0
    rows = [{"seq": m["seq"], "at": m["at"], "from": m["from_version"], "to": m["to_version"],
             "by": registry.mover(m["by"]), "run_id": m["run_id"], "reason": m["reason"]} for m in doc["history"]]
    _print(doc, args.json, _table(rows, ["seq", "at", "from", "to", "by", "run_id", "reason"]))
    return 0


def cmd_registry_promote(args: argparse.Namespace) -> int:
    name, version = registry.parse_ref(args.ref)
    with _audited("registry promote", f"{name}:{args.alias}") as run:
        store = _store(args)
        before = registry.get_alias(store, name, args.alias)
        doc = registry.promote(store, name, args.alias, version, run=run, reason=args.reason or "",
                               expected_version=args.expect_version, expect_unset=args.expect_unset)
    if before is None:
        how = "set"
    elif before["version"] == doc["version"]:
        how = "already there: nothing changed"
    else:
        how = f"moved from version {before['version']}"
    _print(doc, args.json, f"{name}:{args.alias} -> version {doc['version']} ({how})")
    if not (registry.get_version(store, name, doc["version"]).get("lineage") or {}).get("gates"):
        print(f"warning: {name}@{doc['version']} passed no gate (registered from outside a pipeline): nothing judged "
              f"it against the data, the baseline or the champion. To accept a model a gate refused, change the "
              f"gate in the spec and run it again (docs/operations.md, When a gate fails)", file=sys.stderr)
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    name, alias = registry.parse_alias_ref(args.ref)
    with _audited("registry rollback", f"{name}:{alias}") as run:
        doc = registry.rollback(_store(args), name, alias, run=run, reason=args.reason or "")
    _print(doc, args.json, f"{name}:{alias} -> version {doc['version']}")
    return 0


def cmd_registry_download(args: argparse.Namespace) -> int:
    from pathlib import Path

    name, version = registry.parse_ref(args.ref)
    record = registry.download(_store(args), name, version, Path(args.dest))
    _print(record, args.json, f"{name}@{version}: {len(record['artifacts'])} artifact(s) in {args.dest}, "
                              f"SHA-256 verified")
    return 0


def _validation_metrics(metrics: dict) -> str:
    """A version's validation metrics, whichever its kind reports (val_mae, val_error...)."""
    shown = [f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())
             if k.startswith("val_") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return " ".join(shown) or "-"


def cmd_registry_list(args: argparse.Namespace) -> int:
    store = _store(args)
    damaged: list[str] = []
    records = registry.list_versions(store, args.name, problems=damaged)
    rows = [{"model": f"{r['name']}@{r['version']}", "validation": _validation_metrics(r["metrics"]),
             "dataset": r["lineage"].get("dataset", "-"), "registered_at": r["registered_at"],
             # run ids repeat across DAGs (backfill__<date>): the DAG says which one registered it
             "dag_id": r["registered_by"].get("dag_id") or "-", "run_id": r["registered_by"].get("run_id")}
            for r in records]
    # an empty list says where it looked: a wrong working directory or DLPIPE_HOME reads another registry
    human = _table(rows, ["model", "validation", "dataset", "registered_at", "dag_id", "run_id"]) if rows else \
        f"(no versions{f' of {args.name}' if args.name else ''} in the registry {store.uri})"
    if not rows and getattr(store, "root", None) is not None and not store.root.exists():
        human = (f"(no registry at {store.uri}: the directory does not exist, so nothing was ever registered "
                 f"there; check --root and DLPIPE_REGISTRY_ROOT)")
    _print(records, args.json, human)
    for problem in damaged:  # listed apart, on stderr: the readable versions are still listed
        print(f"dlpipe: damaged: {problem}", file=sys.stderr)
    return 1 if damaged else 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    name, version = registry.parse_ref(args.ref)
    record = registry.get_version(_store(args), name, version)
    _print(record, args.json, json.dumps(record, indent=2, sort_keys=True))
    return 0


def _record_problems(record: dict, verify_files: bool = False) -> list[str]:
    """A version record that no longer matches itself, or whose artifacts are not the model
    files its training committed; a record or training manifest missing fields it must have is
    one problem, not a traceback (lineage exists to report damage)."""
    try:
        return _checked_record(record, verify_files)
    except (KeyError, TypeError, AttributeError) as exc:
        return [f"{record.get('name')}@{record.get('version')}: its record or its training's manifest is "
                f"not what dlpipe writes ({type(exc).__name__}: {exc}): edited or damaged"]


def _checked_record(record: dict, verify_files: bool) -> list[str]:
    problems = []
    ref = f"{record['name']}@{record['version']}"
    if not registry.record_is_intact(record):
        problems.append(f"{ref}: its artifacts and lineage do not give its model_fingerprint (edited after registration)")
    training_id = record["lineage"].get("training")
    try:
        training = commit.load_manifest(training_id) if training_id else None
    except (NotCommittedError, IntegrityError, OSError, ValueError):
        return problems  # the chain below reports it
    if training is not None:
        problems += _gate_problems(record, training, verify_files)
        registered_seal = (record["lineage"].get("seals") or {}).get(training_id)
        if registered_seal and training.get("seal") not in (None, registered_seal) and not commit.seal_broken(training):
            # A manifest that gives its own seal, but not the registered one: committed again
            # under the same id after its outputs were removed (the stage ran again), or edited
            # and resealed. Either way the record's metrics, run and files belong to the other
            # commit, and comparing them field by field would only list the consequences.
            problems.append(f"{ref}: {training_id} is not the manifest it was registered on (seal "
                            f"{str(training.get('seal'))[:16]}, registered {registered_seal[:16]}): it was committed "
                            f"again at {training['committed_at']} by {training['run'].get('dag_id')}/"
                            f"{training['run'].get('run_id')} (its outputs removed and the stage run again), or "
                            f"edited and resealed; the manifest and files this version was registered on are gone")
            return problems
        if record.get("metrics") != training["summary"].get("metrics"):  # `registry list` shows them
            problems.append(f"{ref}: its metrics are not the ones {training_id} committed")
        for field, committed_as in (("code", training.get("code")), ("trained_by", training.get("run"))):
            if record["lineage"].get(field) != committed_as:
                problems.append(f"{ref}: its lineage's {field} is not the one {training_id} committed")
        problems += _derived_lineage_problems(record, training_id)
        for mid, seal in (record["lineage"].get("seals") or {}).items():
            try:
                found = commit.load_manifest(mid).get("seal")
            except (NotCommittedError, IntegrityError, OSError, ValueError):
                continue  # the chain below reports a missing or unreadable manifest
            if found != seal:
                problems.append(f"{ref}: {mid} is not the manifest it was registered on (its seal "
                                f"{str(found)[:16]}, registered {str(seal)[:16]}): edited after the registration")
        committed = model_files(training)
        for art in record["artifacts"]:
            if (committed.get(art["name"]) or {}).get("sha256") != art["sha256"]:
                problems.append(f"{ref}: artifact {art['name']} is not the file {training_id} committed")
    return problems


# the parts of a version record's lineage that its training's chain of manifests determines
DERIVED_LINEAGE = ("dataset", "dataset_fingerprint", "feature_partitions", "raw_partitions", "config")


def _derived_lineage_problems(record: dict, training_id: str) -> list[str]:
    """The record's dataset, partitions and config against what the manifests say now: they sit
    under the record's own model fingerprint, which anyone can recompute after an edit."""
    from dlpipe.lineage import model_lineage

    ref = f"{record['name']}@{record['version']}"
    try:
        derived = model_lineage(training_id, [])
    except (NotCommittedError, IntegrityError, OSError, ValueError, KeyError, IndexError, TypeError):
        return []  # a missing or broken link: the chain reports it
    return [f"{ref}: its lineage's {field} is not what {training_id} and the manifests it was computed from "
            f"commit (edited after the registration)" for field in DERIVED_LINEAGE
            if record["lineage"].get(field) != derived.get(field)]


def _gate_problems(record: dict, training: dict, verify_files: bool = False) -> list[str]:
    """The gates a version was registered on, checked against their own manifests: each one
    committed and intact, its verdict 'passed' and the one the record carries, and judging this
    training or its dataset. The record's copy of the verdicts is outside its fingerprint."""
    ref = f"{record['name']}@{record['version']}"
    gates = record["lineage"].get("gates") or []
    carried = record["lineage"].get("gate_verdicts") or {}
    problems = [] if gates else [f"{ref}: registered on no gate"]
    if set(carried) != set(gates):
        problems.append(f"{ref}: its gate verdicts name {sorted(carried)}, its gates {sorted(gates)}")
    for gid in gates:
        gate, status = checked_manifest(gid, verify_files=verify_files)
        problems += [f"{gid}: {p}" for p in status["problems"]]
        if gate is None:
            continue
        verdict, copy = gate["summary"].get("verdict"), carried.get(gid)
        if verdict != "passed":
            problems.append(f"{gid}: verdict {verdict!r}, not 'passed'")
        if copy != gate["summary"]:  # registration copies the gate's whole summary
            problems.append(f"{gid}: the record's copy of its verdict and evidence is not the gate's "
                            f"({_differences(copy, gate['summary'])})")
        if not vouches_for(gate, training):
            problems.append(f"{gid}: judged {judged(gate)}, not {training['id']} or its dataset")
            continue
        # and the very commit the version was registered on: the training's seal in the record,
        # the dataset's seal in the training's input entry
        judged_seal = gate["inputs"][0].get("seal")
        meant = ((record["lineage"].get("seals") or {}).get(training["id"]) if judged(gate) == training["id"]
                 else next((i.get("seal") for i in training["inputs"] if i["id"] == judged(gate)), None))
        if judged_seal and meant and judged_seal != meant:
            problems.append(f"{gid}: judged another commit of {judged(gate)} (seal {judged_seal[:16]}), not the one "
                            f"{ref} was registered on ({meant[:16]}): the stage ran again after the gate judged it")
    return problems


def _stored_artifact_problems(store, record: dict) -> list[str]:
    """The registry's own copies of a version's artifacts, read back and re-hashed (what a
    download would load), for ``--verify``."""
    import tempfile
    from pathlib import Path

    from dlpipe.hashing import sha256_file

    problems, ref = [], f"{record['name']}@{record['version']}"
    with tempfile.TemporaryDirectory(prefix="dlpipe-verify-") as tmp:
        for art in record["artifacts"]:
            target, key = Path(tmp) / "blob", f"{record['name']}/blobs/{art['sha256']}"
            actual = None
            if store.exists(key):
                store.download(key, target)
                actual = sha256_file(target)
            if actual != art["sha256"]:
                problems.append(f"{ref}: the stored artifact {art['name']} "
                                f"{'is missing' if actual is None else f'has sha256 {actual[:16]}'}, "
                                f"the record says {art['sha256'][:16]}")
            target.unlink(missing_ok=True)
    return problems


def _differences(copy: object, original: dict, shown: int = 3) -> str:
    """"metrics.val_mae: the gate has 3.65, the record 2.1; ..." for the first fields where
    ``copy`` differs from ``original``, nested fields by their path."""
    found: list[str] = []

    def walk(a: object, b: object, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{path}.{k}" if path else str(k))
        elif a != b:
            found.append(f"{path or 'the whole copy'}: the gate has {_brief(b)}, the record {_brief(a)}")

    walk(copy, original, "")
    return "; ".join(found[:shown]) + (f"; and {len(found) - shown} more" if len(found) > shown else "")


def _brief(value: object, chars: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= chars else f"{text[:chars]}..."


def cmd_lineage(args: argparse.Namespace) -> int:
    name, version = registry.parse_ref(args.ref)
    store = _store(args)
    record = registry.get_version(store, name, version)  # a record without lineage or artifacts is refused there
    training = record["lineage"].get("training")  # absent for a model registered from outside
    chain = manifest_tree(training, verify_files=args.verify) if training else None
    problems = _record_problems(record, args.verify) + tree_problems(chain)
    if args.verify:
        problems += _stored_artifact_problems(store, record)
    tree = {"model": f"{name}@{version}", "model_fingerprint": record["model_fingerprint"],
            "artifacts": record["artifacts"], "registered_by": record["registered_by"],
            "lineage": record["lineage"], "chain": chain, "problems": problems,
            "files_verified": bool(args.verify)}
    lines = [f"{name}@{version}  (registered {record['registered_at']} by "
             f"{record['registered_by']['dag_id']}/{record['registered_by']['run_id']})"]
    for art in record["artifacts"]:
        lines.append(f"  artifact {art['name']}  sha256={art['sha256'][:16]}  {art['size']} bytes")
    for gate, verdict in (record["lineage"].get("gate_verdicts") or {}).items():
        lines.append(f"  gate {gate}: {verdict.get('verdict', '?') if isinstance(verdict, dict) else verdict}")

    def walk(node: dict, depth: int) -> None:
        pad = "  " * depth
        flag = "  !! see below" if node.get("problems") else ""
        if "run" not in node:  # missing or unreadable
            lines.append(f"{pad}<- {node['id']}{flag}")
            return
        summary = ", ".join(f"{k}={v}" for k, v in node["summary"].items() if k != "metrics")
        lines.append(f"{pad}<- {node['id']}  [{node['run']['dag_id']}/{node['run']['task_id']} "
                     f"try {node['run']['try_number']}, {node['run']['user']}, code "
                     f"{_code_version(node['code'])}] {summary}{flag}")
        for child in node.get("inputs", []):
            walk(child, depth + 1)

    if chain is not None:
        walk(chain, 1)
    else:
        lines.append(f"  <- no pipeline lineage: {', '.join(f'{k}={v}' for k, v in record['lineage'].items())}")
    if problems:
        lines += [f"!! {p}" for p in problems]
        lines.append(f"{len(problems)} problem(s): this lineage cannot be trusted as shown")
    else:
        old = unsealed(chain)
        sealed = "seals match" if not old else (
            f"seals match except on {len(old)} manifest(s) committed before seals, whose summary, run and file "
            f"list nothing covers: {', '.join(old[:3])}{' ...' if len(old) > 3 else ''}")
        lines.append(f"every link checked: fingerprints match, {sealed}" + (", files re-hashed" if args.verify else
                                                                            " (add --verify to re-hash every file)"))
    _print(tree, args.json, "\n".join(map(_shown, lines)))  # a record's text is anyone's text
    return 1 if problems else 0


def _code_version(code: dict) -> str:
    """'9c1e2f3a4b5c (git 1a2b3c4d, dirty)': a manifest's sources hash and the checkout it ran from."""
    git = code.get("git_commit")
    where = f" (git {git[:8]}{', dirty' if code.get('git_dirty') else ''})" if git else ""
    return f"{str(code.get('sources_hash', '?'))[:12]}{where}"


def cmd_manifest_show(args: argparse.Namespace) -> int:
    """Any stage's manifest, as an auditor asks of it: who ran it, when, on which inputs, with
    which code and config, producing which files."""
    m, status = checked_manifest(args.id, verify_files=args.verify)
    problems = status.get("problems", [])
    if m is None:
        _print({"id": args.id, **status}, args.json, "\n".join(_shown(f"!! {p}") for p in problems))
        return 1
    if args.json:
        _print({**m, "problems": problems}, True, "")
        return 1 if problems else 0
    run, code = m["run"], m["code"]
    lines = [
        f"manifest   {m['id']}", f"location   {commit.location(m)}",
        f"committed  {m['committed_at']} (started {m.get('started_at', '?')}, attempt {m.get('attempt_id', '?')})",
        f"by         {run.get('dag_id')}/{run.get('run_id')} task {run.get('task_id')} try {run.get('try_number')}",
        f"           user {run.get('user')} on {run.get('host')}, triggered by {run.get('triggered_by', '-')} "
        f"({run.get('run_type', '-')})" + (f", reason: {run['reason']}" if run.get("reason") else ""),
        f"code       {_code_version(code)}, dlpipe {code.get('dlpipe_version', '?')}",
        "packages   " + ", ".join(f"{k} {v}" for k, v in sorted((code.get("packages") or {}).items()) if v),
        "config     " + json.dumps(m["config"], sort_keys=True),
        "inputs     " + (", ".join(i["id"] for i in m["inputs"]) or "(none)"),
        "summary    " + json.dumps({k: v for k, v in m["summary"].items() if k not in ("schema", "stats")},
                                   sort_keys=True, default=str),
    ]
    lines = [_shown(line) for line in lines]  # manifest text is anyone's text
    lines += ["", f"files ({len(m['outputs']['files'])})"]
    lines.append(_table([{"path": f["path"], "size": f["size"], "sha256": f["sha256"][:16]}
                         for f in m["outputs"]["files"]], ["path", "size", "sha256"]))
    lines += [_shown(f"!! {p}") for p in problems]
    if not problems:
        sealed = ("fingerprint and seal match" if m.get("seal") else "fingerprint matches; no seal (committed "
                  "before seals): its summary, run and file list nothing covers")
        lines.append(sealed + (", files re-hashed" if args.verify else
                                                    " (add --verify to re-hash every file)"))
    print("\n".join(lines))
    return 1 if problems else 0


def gate_verdicts(dataset: dict) -> list[dict]:
    """Committed gate verdicts on a dataset (manifests are immutable, so verdicts point at it)."""
    found = []
    for mfile in (settings.home() / "gates").glob(f"*/{dataset['partition']}/manifests/*.json"):
        g = commit.read_manifest(mfile)
        if judged(g) == dataset["id"]:  # not a gate that only compared against it (drift baseline)
            found.append(g)
    return sorted(found, key=lambda g: g["committed_at"])


def cmd_dataset_show(args: argparse.Namespace) -> int:
    from dlpipe.datasets import resolve

    m = resolve(args.ref)
    problems = [] if not commit.seal_broken(m) else [
        f"{m['id']}: edited after its commit (its outputs, summary and run do not give its seal): do not "
        f"trust what it shows"]
    if args.verify:
        try:
            commit.verify(m)
        except IntegrityError as exc:
            problems.append(str(exc))
    if args.json:
        _print({**m, "problems": problems} if problems or args.verify else m, True, "")
        return 1 if problems else 0
    s = m["summary"]
    # manifest text is anyone's text: each line is escaped (the tables escape their cells)
    lines = [_shown(line) for line in (
        f"dataset   {m['id']}", f"location  {commit.location(m)}",
        f"committed {m['committed_at']} by {m['run']['dag_id']}/{m['run']['run_id']} "
        f"(task {m['run']['task_id']}, try {m['run']['try_number']}, user {m['run']['user']})",
        f"content   sha256 {s.get('content_sha256', '-')}",
        f"rows      {s['rows']}", f"window    {s.get('window')}",
        "inputs    " + ", ".join(i["id"] for i in m["inputs"]))]
    lines += ["", "schema", _table(s.get("schema", []), ["name", "numpy_dtype", "shape", "codec"])]
    for split, cols in sorted(s.get("stats", {}).items()):
        lines += ["", _shown(f"column statistics ({split})")]
        lines.append(_table([{"column": c, **{k: _fmt(v) for k, v in st.items()}} for c, st in cols.items()],
                            ["column", "count", "nulls", "min", "max", "mean"]))
    verdicts = gate_verdicts(m)
    lines += ["", "gates"] + ([_shown(f"  {g['id']}: {g['summary'].get('verdict')} "
                                      f"({g['summary'].get('expectations', '-')} expectations)") for g in verdicts]
                              or ["  (none committed: a failed gate leaves its reason in `dlpipe audit`)"])
    lines += ["", f"files ({len(m['outputs']['files'])})"]
    lines.append(_table([{"path": f["path"], "size": f["size"], "sha256": f["sha256"][:16]}
                         for f in m["outputs"]["files"]], ["path", "size", "sha256"]))
    if args.verify and not problems:
        lines += ["", "every file re-hashed: the bytes are the ones committed"]
    lines += [_shown(f"!! {p}") for p in problems]
    print("\n".join(lines))
    return 1 if problems else 0


def cmd_audit(args: argparse.Namespace) -> int:
    if args.verify:
        return _verify_audit_log(args)
    events = [e for e in audit.read() if (not args.run_id or e["run"]["run_id"] == args.run_id)
              and (not args.dag_id or e["run"]["dag_id"] == args.dag_id)]
    if not events and (args.run_id or args.dag_id):  # a mistyped id would read as "nothing happened"
        wanted = " and ".join(f"{k} {v!r}" for k, v in (("run", args.run_id), ("dag", args.dag_id)) if v)
        print(f"no audit events for {wanted} in {settings.audit_log_path()}; `dlpipe audit` lists them all",
              file=sys.stderr)
        return 1
    rows = [{"ts": e["ts"], "event": e["event"], "task": e["run"]["task_id"],
             "try": e["run"]["try_number"], "user": e["run"]["user"],
             "triggered": _trigger(e["run"]), "manifest": e.get("manifest_id") or "-",
             # which attempt: re-commits of one id (its outputs removed, the stage run again) differ here
             "attempt": (e.get("attempt_id") or e.get("committed_attempt_id") or "")[:8],
             "seal": (e.get("seal") or "")[:8],
             "why": e.get("reason") or _first_line(e.get("error", ""), 80)} for e in events]
    # run ids repeat across DAGs (backfill__<date> in each): with several, say which DAG each is
    dags = len({e["run"]["dag_id"] for e in events}) > 1
    for row, e in zip(rows, events):
        row["dag"] = e["run"]["dag_id"]
    reasons = {(e["run"]["dag_id"], e["run"]["run_id"]): e["run"].get("reason") for e in events
               if e["run"].get("reason")}
    header = "".join(f"run {_shown(run)}{f' of {_shown(dag)}' if dags else ''}: {_shown(why)}\n"
                     for (dag, run), why in reasons.items())
    _print(events, args.json, header + _table(rows, ["ts", "event", *(["dag"] if dags else []), "task", "try", "user",
                                                     "triggered", "manifest", "attempt", "seal", "why"]))
    return 0


def _verify_audit_log(args: argparse.Namespace) -> int:
    """`dlpipe audit --verify`: every event's link to the one before it (audit.verify)."""
    if args.run_id or args.dag_id:
        print("--verify checks the whole log: leave out --run-id and --dag-id", file=sys.stderr)
        return 2
    path = settings.audit_log_path()
    linked, unlinked, problems = audit.verify(path)
    if args.json:
        _print({"path": str(path), "linked": linked, "unlinked": unlinked, "problems": problems}, True, "")
    else:
        print(f"{path}: {linked} event(s) linked to the line before them, {unlinked} at the start with no link "
              f"(the log's first event, and any written before events were linked)")
        for p in problems:
            print(f"!! {p}")
        if not problems:
            print("no break in the chain (lines cut from the end leave none: compare the count with a copy)")
    return 1 if problems else 0


def cmd_gc(args: argparse.Namespace) -> int:
    """List (or, with --delete, remove) what dlpipe.garbage calls garbage."""
    from dlpipe import garbage

    older_than = garbage.parse_age(args.older_than)
    found = garbage.find(older_than)
    home = settings.home()
    rows = [{"kind": g.kind, "path": g.path.relative_to(home).as_posix(), "MB": f"{g.size / 1e6:.1f}", "why": g.why}
            for g in found]
    total = sum(g.size for g in found)
    if args.json:
        _print([{**r, "size": g.size} for r, g in zip(rows, found)], True, "")
    elif found:
        print(_table(rows, ["kind", "path", "MB", "why"]))
    if not found:
        print(f"nothing to collect under {home} (attempts and checkpoints untouched for {args.older_than} or "
              f"ended without a commit)", file=sys.stderr)
        return 0
    if not args.delete:
        print(f"{len(found)} folder(s), {total / 1e6:.1f} MB: a dry run; add --delete to remove them", file=sys.stderr)
        return 0
    freed = garbage.remove(found, cli_context("gc"))
    print(f"removed {len(found)} folder(s), {freed / 1e6:.1f} MB (each recorded in the audit log)", file=sys.stderr)
    return 0


def _first_line(text: str, chars: int) -> str:
    """The first line of an error, cut to ``chars`` ('...' where more follows)."""
    first = text.splitlines()[0] if text else ""
    return first[:chars] + ("..." if len(first) > chars or "\n" in text else "")


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


SUMMARY_TASKS = ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate",
                 "register_model", "promote_staging"]


def _stage_of(event: dict) -> str | None:
    """Which stage of the chain an event's task is: the stage its operator records (inherited by
    subclasses, so a hand-written DAG's own task ids are found); for events from before tasks
    recorded it, the task id if it is a shipped one."""
    recorded = event["run"].get("pipeline_stage")
    if recorded in SUMMARY_TASKS:
        return recorded
    task = event["run"]["task_id"]
    return task if recorded in (None, "-") and task in SUMMARY_TASKS else None


def _trigger(run: dict) -> str:
    """Who started the run and how ('alice (backfill)'); '-' outside Airflow. Events from before
    run_type was recorded have only triggered_by."""
    who, how = run.get("triggered_by", "-"), run.get("run_type", "-")
    return who if how in ("-", who) else f"{who} ({how})"


def _try_of(event: dict) -> int:
    try:
        return int(event["run"].get("try_number") or 0)
    except (TypeError, ValueError):  # '-' outside Airflow
        return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Summarise the latest (or given) run of a DAG from the audit log; non-zero if incomplete."""
    events = [e for e in audit.read() if e["run"]["dag_id"] == args.dag_id]
    if not events:
        print(f"no audit events for dag {args.dag_id!r} in {settings.audit_log_path()}", file=sys.stderr)
        return 1
    run_id = args.run_id or events[-1]["run"]["run_id"]
    if not any(e["run"]["run_id"] == run_id for e in events):
        # a mistyped run id would otherwise read as a run whose every stage went missing
        runs = list(dict.fromkeys(e["run"]["run_id"] for e in reversed(events)))[:5]
        print(f"no run {run_id!r} of dag {args.dag_id!r} in the audit log {settings.audit_log_path()}; "
              f"its most recent runs, newest first: {', '.join(runs)}", file=sys.stderr)
        return 1
    tasks: dict[str, dict[str, dict | None]] = {}  # stage -> task id -> its last event other than 'started'
    final: dict[str, dict] = {}  # stage -> the last such event of any of its tasks (for the details)
    follows = None  # registration's last 'started' event saying what follows it in the DAG
    # a stage run again (the run cleared or reprocessed): the newest event of its highest try, once
    # it has a second try
    newest: dict[str, dict] = {}
    tries: dict[str, set[int]] = {}
    began: dict[str, dict] = {}  # task id -> the 'started' event of its highest try
    for e in events:
        stage = _stage_of(e)
        if e["run"]["run_id"] != run_id or not stage:
            continue
        tries.setdefault(stage, set()).add(_try_of(e))
        # of its highest try: a try Airflow gave up on can log its failure after the next one ended
        top = newest.get(stage)
        if top is None or (_try_of(e), e["ts"]) >= (_try_of(top), top["ts"]):
            newest[stage] = e
        if e["event"] == "started" and _try_of(e) >= _try_of(began.get(e["run"]["task_id"]) or e):
            began[e["run"]["task_id"]] = e
        per_task = tasks.setdefault(stage, {})
        per_task.setdefault(e["run"]["task_id"], None)  # started only: still running, or lost
        if e["event"] != "started":
            # the newest try decides, not the last line: a try that Airflow gave up on (a lost
            # heartbeat) may log its 'failed' after the next try committed
            last = per_task[e["run"]["task_id"]]
            if last is None or _try_of(e) >= _try_of(last):
                per_task[e["run"]["task_id"]] = e
            if stage not in final or _try_of(e) >= _try_of(final[stage]):
                final[stage] = e
        elif stage == "register_model" and e.get("downstream") is not None:
            follows = e
    # The chain starts at its first stage that ran: kinds without a feature stage start at the
    # dataset. Every stage after it must have committed or skipped, in each of its tasks.
    first = next((i for i, t in enumerate(SUMMARY_TASKS) if t in tasks), 0)
    expected = SUMMARY_TASKS[first:]
    # a DAG with registry.promote_to: null has no promotion task: its registration says what follows it
    if follows:
        promotes = "promote_staging" in follows.get("downstream_stages", follows["downstream"])
        if not promotes and "promote_staging" not in tasks:
            expected = expected[:-1]
    rows, failures, ok = [], [], True
    failed_before: dict | None = None  # the latest failure of a stage earlier in the chain
    ran_again: dict | None = None  # the newest event of any stage earlier in the chain
    for stage in expected:
        for task, e in (tasks.get(stage) or {stage: None}).items():
            outcome = e["event"] if e else "missing"
            why = (e or {}).get("reason") or _first_line((e or {}).get("error", ""), 100)
            start = began.get(task)
            if e and outcome != "failed" and failed_before and e["ts"] < failed_before["ts"]:
                # a result of an earlier try of the run (cleared since): not what the run ends with
                outcome, why = "stale", (f"from before {failed_before['run']['task_id']} failed at "
                                         f"{failed_before['ts']}; not run since")
                final.pop(stage, None)
            elif e and start and _try_of(start) > _try_of(e):  # a later try began and has not ended
                outcome, why = "running", (f"try {start['run']['try_number']} started at {start['ts']} and has "
                                           f"no result yet (still running, or its process was lost)")
                final.pop(stage, None)
            elif e and ran_again and e["ts"] < ran_again["ts"]:  # the run was cleared or reprocessed
                outcome, why = "stale", (f"from before {ran_again['run']['task_id']} ran again at "
                                         f"{ran_again['ts']}; not run since")
                final.pop(stage, None)
            ok &= outcome in ("committed", "skipped", "conflict")
            rows.append({"task": task, "outcome": outcome, "output": (e or {}).get("manifest_id") or "-",
                         "why": why})
            if e and e["event"] == "failed":
                failures.append(f"{task} failed: {e.get('error', '')}")
                if failed_before is None or e["ts"] > failed_before["ts"]:
                    failed_before = e
        # by time, but only once a stage has a second try: clocks of two workers may disagree
        if len(tries.get(stage, ())) > 1 and (ran_again is None or newest[stage]["ts"] > ran_again["ts"]):
            ran_again = newest[stage]
    print(f"dlpipe run summary: dag {args.dag_id}, run {run_id}\n")
    print(_table(rows, ["task", "outcome", "output", "why"]))
    if failures:  # the whole error: a gate's failed checks come after its first line
        print("\n" + "\n".join(_shown(line) for f in failures for line in f.splitlines()))
    details = _summary_details(final)
    if details:
        print("\n" + "\n".join(details))
    # run ids repeat across DAGs (backfill__2026-01-05T00:00:00+00:00 in every one of them)
    print(f"\naudit trail: {settings.audit_log_path()}  (dlpipe audit --dag-id {args.dag_id} --run-id '{run_id}')")
    if not ok:
        print("\nFAILED: not every stage committed or skipped; see the task logs above.", file=sys.stderr)
    return 0 if ok else 1


def _quality(m: dict) -> str:
    """A training's quality in words: the two shipped kinds' metrics by name, any other kind's
    train, validation and baseline numbers as they are."""
    if all(k in m for k in ("train_mae", "val_mae", "baseline_mae")):  # the ETA regressor
        return (f"train MAE {m['train_mae']:.3f} min, validation MAE {m['val_mae']:.3f} min "
                f"(baseline {m['baseline_mae']:.3f})")
    if all(k in m for k in ("train_error", "val_error", "baseline_error")):  # the digits classifier
        return (f"train error {m['train_error']:.2%}, validation error {m['val_error']:.2%} "
                f"(baseline {m['baseline_error']:.2%})")
    shown = [f"{k} {_fmt(v)}" for k, v in sorted(m.items()) if k.startswith(("train_", "val_", "baseline_"))
             and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(shown) or "no train_, val_ or baseline_ metrics"


def _summary_details(final: dict[str, dict]) -> list[str]:
    out = []

    def load(task: str) -> dict | None:
        e = final.get(task)
        if not e or e["event"] == "failed" or "@" not in str(e.get("manifest_id")):
            return None
        return _manifest_or_none(e["manifest_id"])

    feats = load("extract_features")
    if feats:
        raw = [m for m in map(_manifest_or_none, (i["id"] for i in feats["inputs"])) if m]
        gone = len(feats["inputs"]) - len(raw)  # retention may delete raw partitions (docs/operations.md)
        out.append(f"raw rows read:      {sum(m['summary']['rows'] for m in raw)} from {len(raw)} raw partition(s)"
                   + (f" ({gone} more since deleted)" if gone else ""))
        out.append(f"feature rows:       {feats['summary']['rows']} ({feats['partition']})")
    ds = load("materialize_dataset")
    if ds:
        out.append(f"dataset:            {ds['id']}  rows {ds['summary']['rows']}")
    gate = load("data_gate")
    if gate:
        out.append(f"data gate:          {gate['summary']['verdict']} ({gate['summary']['expectations']} expectations)")
    tr = load("train")
    if tr:
        m = tr["summary"]["metrics"]
        speed = f"{m['samples_per_s']:.0f} samples/s" if m.get("samples_per_s") is not None else \
            "no epoch trained in the committing try (resumed at the end)"
        out.append(f"training:           {_quality(m)}, {speed} on {m.get('world_size', '?')} processes")
    mg = load("model_gate")
    if mg:
        note = mg["summary"].get("note")
        out.append(f"model gate:         {mg['summary']['verdict']}" + (f" ({note})" if note else ""))
    reg = final.get("register_model")
    if reg and reg["event"] in ("committed", "skipped"):
        verb = "registered" if reg["event"] == "committed" else "already registered (identical model)"
        out.append(f"model:              {reg['manifest_id']} {verb}; dlpipe lineage {reg['manifest_id']}")
    promo = final.get("promote_staging")
    if promo and promo["event"] in ("committed", "skipped"):
        how = "moved" if promo["event"] == "committed" else promo.get("reason") or "already there"
        version = promo.get("fingerprint")
        if promo["event"] == "skipped" and "candidate_version" not in promo:
            # a forward-only skip recorded before 2026-12-07 put the refused candidate there; its reason says where
            # the alias stayed
            stayed = re.search(r"stays at version (\d+)", promo.get("reason") or "")
            version = stayed.group(1) if stayed else version
        out.append(f"alias:              {promo['manifest_id']} -> version {version} ({_shown(how)})")
    return out


def _manifest_or_none(mid: str) -> dict | None:
    try:
        return commit.load_manifest(mid)
    except DlpipeError:
        return None


def _iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD, e.g. 2026-01-01") from None


def _version_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number; versions are 1, 2, ... "
                                         f"(--expect-unset for an alias never set)")
    return value


def _not_empty(option: str):
    """An option's type that refuses '' (an unset shell variable would select everything)."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{option} is empty; give a value or leave the option out")
        return text
    return check


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlpipe", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo-data", help="generate deterministic raw trip events (one partition per day)")
    d.add_argument("--start", default="2026-01-01", type=_iso_day, help="first day, YYYY-MM-DD")
    d.add_argument("--days", type=int, default=4, help="daily partitions to write (default 4)")
    d.add_argument("--rows-per-day", type=int, default=20_000, help="trips a day, 1 to 10,000,000 (default 20000)")
    d.add_argument("--seed", type=int, default=7, help="same seed, same bytes (default 7)")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=cmd_demo_data)

    ing = sub.add_parser("ingest-raw", help="commit a day of your own raw Parquet files (what features.raw reads)")
    ing.add_argument("name", help="the raw source's name, as a pipeline's features.raw gives it")
    ing.add_argument("--day", required=True, type=_iso_day, help="the UTC day the events belong to, YYYY-MM-DD")
    ing.add_argument("paths", nargs="+", metavar="PATH", help="Parquet files, or directories of *.parquet files")
    ing.add_argument("--json", action="store_true", help="print the result as JSON")
    ing.set_defaults(func=cmd_ingest_raw)

    r = sub.add_parser("registry", help="model registry").add_subparsers(dest="registry_cmd", required=True)
    rr = r.add_parser("register", help="register a model directory produced outside a pipeline")
    rr.add_argument("name")
    rr.add_argument("model_dir")
    rr.add_argument("--metrics", help="JSON file of metrics to record")
    rr.add_argument("--note", help="free text kept with the version")
    rr.set_defaults(func=cmd_registry_register)
    rl = r.add_parser("list", help="list registered versions")
    rl.add_argument("name", nargs="?")
    rl.set_defaults(func=cmd_registry_list)
    rs = r.add_parser("show", help="show one version record")
    rs.add_argument("ref", help="NAME@VERSION")
    rs.set_defaults(func=cmd_registry_show)
    rh = r.add_parser("history", help="every move of an alias: who, when, from, to, why")
    rh.add_argument("ref", help="NAME:ALIAS (default alias: production)")
    rh.set_defaults(func=cmd_registry_history)
    rp = r.add_parser("promote", help="point an alias at a version (compare-and-swap)")
    rp.add_argument("ref", help="NAME@VERSION")
    rp.add_argument("alias", help="e.g. staging, production")
    rp.add_argument("--reason")
    expect = rp.add_mutually_exclusive_group()
    expect.add_argument("--expect-version", type=_version_number, metavar="N",
                        help="only move if the alias points at version N now")
    expect.add_argument("--expect-unset", action="store_true", help="only set the alias if it was never set")
    rp.set_defaults(func=cmd_registry_promote)
    rb = r.add_parser("rollback", help="undo an alias's latest move: back to the version it pointed at before "
                                       "(twice in a row undoes the undo)")
    rb.add_argument("ref", help="NAME:ALIAS")
    rb.add_argument("--reason")
    rb.set_defaults(func=cmd_registry_rollback)
    rd = r.add_parser("download", help="download a version's artifacts, verifying every SHA-256")
    rd.add_argument("ref", help="NAME@VERSION")
    rd.add_argument("dest", type=_not_empty("DEST"), help="directory to write the artifacts into")
    rd.set_defaults(func=cmd_registry_download)

    ln = sub.add_parser("lineage", help="model version -> training -> dataset -> features -> raw")
    ln.add_argument("ref", help="NAME@VERSION")
    ln.add_argument("--verify", action="store_true",
                    help="also re-hash every file of every manifest in the chain (reads all the data)")
    ln.set_defaults(func=cmd_lineage)
    for sp in (rr, rl, rs, rh, rp, rb, rd, ln):
        sp.add_argument("--root", help="registry root (dir or s3://...); default $DLPIPE_REGISTRY_ROOT "
                                       "or $DLPIPE_HOME/registry")
        sp.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL)")
        sp.add_argument("--json", action="store_true")

    ds = sub.add_parser("dataset", help="committed datasets").add_subparsers(dest="dataset_cmd", required=True)
    dss = ds.add_parser("show", help="a dataset's manifest: files, rows, schema, column statistics")
    dss.add_argument("ref", help="dataset id (datasets/NAME/PARTITION@FP) or a path inside a committed dataset")
    dss.add_argument("--json", action="store_true")
    dss.add_argument("--verify", action="store_true", help="re-hash every file against the manifest (exit 1 if one "
                                                           "differs); the manifest's own seal is always checked")
    dss.set_defaults(func=cmd_dataset_show)

    mf = sub.add_parser("manifest", help="any stage's committed manifests").add_subparsers(dest="manifest_cmd",
                                                                                          required=True)
    mfs = mf.add_parser("show", help="one manifest: who ran it, when, on which inputs, with which code and config, "
                                     "producing which files")
    mfs.add_argument("id", help="a manifest id (STAGE/NAME/PARTITION@FP), as lineage and the audit log show them")
    mfs.add_argument("--json", action="store_true")
    mfs.add_argument("--verify", action="store_true", help="re-hash every file against the manifest (exit 1 if one "
                                                           "differs); its fingerprint and seal are always checked")
    mfs.set_defaults(func=cmd_manifest_show)

    gc = sub.add_parser("gc", help="list (--delete: remove) attempt folders no manifest names and checkpoints of "
                                   "trainings that never committed; never a committed output")
    gc.add_argument("--older-than", default="72h",
                    help="leave what was written in this long ago, e.g. 72h or 3d (default 72h): it may still be "
                         "writing; make it longer than your longest task's execution_timeout times its tries")
    gc.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=cmd_gc)

    a = sub.add_parser("audit", help="audit events (every attempt of every stage)")
    a.add_argument("--run-id", type=_not_empty("--run-id"))
    a.add_argument("--dag-id", type=_not_empty("--dag-id"))
    a.add_argument("--json", action="store_true")
    a.add_argument("--verify", action="store_true",
                   help="check that no event was changed, removed or inserted (each links to the one before)")
    a.set_defaults(func=cmd_audit)

    s = sub.add_parser("summary", help="summary of a DAG run from the audit log (exit 1 if incomplete)")
    s.add_argument("--dag-id", default="eta_training", type=_not_empty("--dag-id"))
    s.add_argument("--run-id", type=_not_empty("--run-id"), help="default: the latest run in the audit log")
    s.set_defaults(func=cmd_summary)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:  # `dlpipe audit | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except DlpipeError as exc:
        print(f"dlpipe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given as an argument: a directory, read-only, missing, full
        if exc.strerror is None:  # botocore's timeouts are OSErrors with no strerror
            if (hint := _s3_hint(exc, _root_given(args))) is None:
                raise
            print(f"dlpipe: error: {hint}", file=sys.stderr)
            return 2
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dlpipe: error: {exc.strerror}{where}; check the paths given (--root, DEST, --metrics, "
              f"DLPIPE_HOME) and their permissions", file=sys.stderr)
        return 2
    except Exception as exc:
        hint = _s3_hint(exc, _root_given(args))
        if hint is None:
            raise
        print(f"dlpipe: error: {hint}", file=sys.stderr)
        return 2


def _root_given(args: argparse.Namespace) -> str:
    """The registry root a command used, and where it came from, for an S3 error."""
    if getattr(args, "root", None):
        return f"{shown_url(args.root)} (--root)"  # a login in it never reaches the message
    if os.environ.get("DLPIPE_REGISTRY_ROOT"):
        return f"{shown_url(os.environ['DLPIPE_REGISTRY_ROOT'])} (DLPIPE_REGISTRY_ROOT)"
    return "--root"


# S3 error codes that say the key pair is wrong, not the rights it has
_BAD_KEYS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def _s3_hint(exc: Exception, root: str = "--root") -> str | None:
    """What to do about an S3 client error, or None for an error that is not one (a bug: it
    keeps its traceback). ``root`` names the registry root and where it was set. Endpoint URLs
    with credentials are refused before any request."""
    try:
        from botocore import exceptions as bc
    except ImportError:
        return None
    if isinstance(exc, bc.NoCredentialsError):
        return ("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "or run where an instance role applies")
    if isinstance(exc, bc.EndpointConnectionError):
        return f"{redacted(str(exc))}; check --endpoint-url or AWS_ENDPOINT_URL, and that the server is up"
    if isinstance(exc, (bc.HTTPClientError, bc.ConnectionError)):  # a timeout, a dropped connection
        return (f"S3 unreachable: {redacted(str(exc))}; retry, or check --endpoint-url or AWS_ENDPOINT_URL, "
                f"that the server is up, and DLPIPE_S3_CONNECT_TIMEOUT_S / DLPIPE_S3_READ_TIMEOUT_S")
    if isinstance(exc, bc.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _BAD_KEYS:
            fix = ("check the key pair (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, "
                   "for temporary credentials, the session token")
        elif code == "NoSuchBucket":
            fix = f"the bucket does not exist: check the bucket in {root}, and --endpoint-url"
        else:
            fix = f"check the bucket in {root} and the credentials' rights on it"
        return f"S3 refused the request: {redacted(str(exc))}; {fix}"
    if isinstance(exc, bc.BotoCoreError):
        return f"S3 client: {redacted(str(exc))}"
    return None


if __name__ == "__main__":
    sys.exit(main())
