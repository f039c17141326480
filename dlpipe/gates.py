"""Validation gates: a data gate (Great Expectations) and a model gate (metric thresholds).

A gate is a stage: its verdict is committed with the evidence, so a retried run that passed
skips it. A failing gate raises GateFailed (deterministic: callers must not retry), lists every
failed check with its observed value and threshold, and commits nothing.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.errors import GateFailed
from dlpipe.hashing import sources_hash
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)


class ColumnRule(BaseModel):
    """What one column must satisfy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str | None = Field(None, description="pandas dtype name, e.g. float32, int32, object")
    not_null: bool = Field(True, description="no nulls allowed")
    min: float | None = Field(None, description="inclusive lower bound")
    max: float | None = Field(None, description="inclusive upper bound")


class DataGateConfig(BaseModel):
    """A data-gate suite: row-count floor plus per-column rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_rows: dict[str, int] = Field(default_factory=lambda: {"train": 1000, "validation": 200},
                                     description="minimum rows per split (GX passes on empty input)")
    columns: dict[str, ColumnRule] = Field(default_factory=dict)


def _expectations(cfg: DataGateConfig) -> list:
    import great_expectations as gx

    E = gx.expectations
    out = []
    for col, rule in sorted(cfg.columns.items()):
        out.append(E.ExpectColumnToExist(column=col))
        if rule.type:
            out.append(E.ExpectColumnValuesToBeOfType(column=col, type_=rule.type))
        if rule.not_null:
            out.append(E.ExpectColumnValuesToNotBeNull(column=col))
        if rule.min is not None or rule.max is not None:
            out.append(E.ExpectColumnValuesToBeBetween(column=col, min_value=rule.min, max_value=rule.max))
    return out


def _describe_failure(split: str, res, columns) -> str:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column")}
    r = res.result or {}
    if "observed_value" in r:
        observed = f"observed {r['observed_value']!r}"
    elif "unexpected_count" in r:
        observed = (f"{r['unexpected_count']} unexpected ({r.get('unexpected_percent', 0):.2f}%), "
                    f"e.g. {r.get('partial_unexpected_list', [])[:3]}")
    elif cfg.kwargs.get("column") not in columns:
        observed = "column missing"
    else:
        observed = "no result"
    if res.exception_info and res.exception_info.get("raised_exception"):
        observed += f" (error: {res.exception_info.get('exception_message')})"
    return f"{split}.{cfg.kwargs.get('column', '*')}: {cfg.type} {kwargs or ''} -> {observed}"


def validate_frames(frames: dict, cfg: DataGateConfig) -> tuple[list[str], dict]:
    """Run the suite on each split's DataFrame; return (failures, evidence)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    failures: list[str] = []
    evidence: dict = {"splits": {}}
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in task logs
    source = ctx.data_sources.add_pandas("dlpipe")
    for split, df in sorted(frames.items()):
        floor = cfg.min_rows.get(split, 1)
        if len(df) < floor:
            failures.append(f"{split}: row count {len(df)} is below the minimum {floor}")
        suite = gx.ExpectationSuite(name=f"data_gate_{split}")
        for exp in _expectations(cfg):
            suite.add_expectation(exp)
        batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split) \
            .get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(suite)
        if len(result.results) != len(suite.expectations):
            failures.append(f"{split}: {len(result.results)} of {len(suite.expectations)} expectations ran")
        failures += [_describe_failure(split, r, df.columns) for r in result.results if not r.success]
        evidence["splits"][split] = {"rows": len(df), "expectations": len(result.results),
                                     "failed": sum(not r.success for r in result.results),
                                     "result": result.to_json_dict()}
    return failures, evidence


def run_data_gate(dataset: dict, cfg: DataGateConfig, *, run: RunContext, name: str = "eta_data") -> StageResult:
    """Validate every split of a committed dataset; commit the verdict or raise GateFailed."""
    import pyarrow.parquet as pq

    def produce(attempt: Path) -> dict:
        root = commit.location(dataset)
        frames = {}
        for split in dataset["summary"]["splits"]:
            paths = [p for p in commit.files(dataset, ".parquet") if p.parent == root / split]
            frames[split] = (pq.ParquetDataset(paths).read().to_pandas() if paths else
                             _empty_frame(dataset))
        failures, evidence = validate_frames(frames, cfg)
        (attempt / "validation.json").write_text(json.dumps(evidence, indent=1, default=str))
        if failures:
            raise GateFailed(f"data gate on {dataset['id']}", failures)
        checks = sum(s["expectations"] for s in evidence["splits"].values())
        log.info("data gate passed: %d expectations on %s", checks, list(frames))
        return {"verdict": "passed", "expectations": checks,
                "rows": {s: v["rows"] for s, v in evidence["splits"].items()}}

    return commit.run_stage(StageKey("gates", name, dataset["partition"]), inputs=[dataset],
                            config=cfg.model_dump(), code={"sources_hash": sources_hash([__file__])},
                            run=run, produce=produce)


def _empty_frame(dataset: dict):
    import pandas as pd

    return pd.DataFrame({c: [] for c, _ in dataset["summary"]["columns"]})


class ModelGateConfig(BaseModel):
    """Model thresholds: beat the naive baseline by a margin, optionally an absolute ceiling."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: str = Field("val_mae", description="metric to judge (lower is better)")
    baseline_metric: str = Field("baseline_mae", description="the naive predictor's value of it")
    min_improvement: float = Field(0.10, ge=0, lt=1, description="required relative gain over the baseline")
    max_value: float | None = Field(None, gt=0, description="absolute ceiling on the metric")


def judge_model(metrics: dict, cfg: ModelGateConfig) -> list[str]:
    """The list of failed model checks (empty means the model passes)."""
    failures = []
    value, base = metrics.get(cfg.metric), metrics.get(cfg.baseline_metric)
    if value is None or not math.isfinite(value):
        return [f"{cfg.metric}: missing or not finite ({value!r}); the training run must report it"]
    if base is None or not math.isfinite(base):
        return [f"{cfg.baseline_metric}: missing or not finite ({base!r})"]
    bound = base * (1 - cfg.min_improvement)
    if value > bound:
        failures.append(f"{cfg.metric}={value:.4f} must be <= {bound:.4f} "
                        f"({cfg.baseline_metric}={base:.4f} improved by {cfg.min_improvement:.0%})")
    if cfg.max_value is not None and value > cfg.max_value:
        failures.append(f"{cfg.metric}={value:.4f} exceeds max_value={cfg.max_value}")
    return failures


def run_model_gate(training: dict, cfg: ModelGateConfig, *, run: RunContext, name: str = "eta_model") -> StageResult:
    def produce(attempt: Path) -> dict:
        metrics = training["summary"]["metrics"]
        failures = judge_model(metrics, cfg)
        (attempt / "verdict.json").write_text(json.dumps({"metrics": metrics, "failures": failures}, indent=1))
        if failures:
            raise GateFailed(f"model gate on {training['id']}", failures)
        return {"verdict": "passed", cfg.metric: metrics[cfg.metric],
                cfg.baseline_metric: metrics[cfg.baseline_metric]}

    return commit.run_stage(StageKey("gates", name, training["partition"]), inputs=[training],
                            config=cfg.model_dump(), code={"sources_hash": sources_hash([__file__])},
                            run=run, produce=produce)
