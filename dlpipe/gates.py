"""Validation gates: a data gate (Great Expectations) and a model gate (metric thresholds).

The data gate validates each split with GX's pandas engine, or with its Spark engine from a
configurable size (``DataGateConfig.engine``, ``spark_min_rows``); both report failures alike.
A gate is a stage: its verdict is committed with the evidence, so a retried run that passed
skips it. A failing gate raises GateFailed (deterministic: callers must not retry), lists every
failed check with its observed value and threshold, and commits nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationInfo, field_validator

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.errors import ConfigError, FieldValueError, GateFailed, redacted
from dlpipe.hashing import fingerprint, sources_hash
from dlpipe.pipeline_config import YamlFloat, YamlNumber, closest
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)


# ColumnRule.type -> the (pandas dtype, Spark type) pairs a column may have, one pair per dtype:
# the pandas name goes to GX's pandas type check, the pyspark.sql.types class name to its Spark
# one, so the same columns pass on both engines. int and float (Python's names) allow every
# width; str, string and StringDtype a string column (GX's pandas check on 'str': every non-null
# value is a str; it knows neither 'string' nor what the StringDtype class stands for).
_INTS = (("int8", "ByteType"), ("int16", "ShortType"), ("int32", "IntegerType"), ("int64", "LongType"))
_FLOATS = (("float32", "FloatType"), ("float64", "DoubleType"))
_STRING = (("str", "StringType"),)
COLUMN_TYPES: dict[str, tuple[tuple[str, str], ...]] = {
    **{pandas: ((pandas, spark),) for pandas, spark in _INTS + _FLOATS},
    "bool": (("bool", "BooleanType"),), "object": (("object", "StringType"),),
    "binary": (("object", "BinaryType"),),  # bytes (Petastorm's ndarray and image fields) read as object
    "str": _STRING, "string": _STRING, "StringDtype": _STRING,
    "int": _INTS, "long": _INTS, "float": _FLOATS,
}
# Spark type -> the pandas name used in failure messages, so both engines report alike
_PANDAS_NAMES = {"StringType": "object", "BinaryType": "object", "BooleanType": "bool", **{spark: pandas for pandas, spark in _INTS + _FLOATS}}

# The expectation types of gx.expectations in the pinned Great Expectations (1.24), by the name
# a spec gives them. A spec is checked against this list when it is loaded (at DAG parse time),
# without importing GX (about a second); tests/unit/test_input_checks.py keeps it equal to GX's own.
GX_EXPECTATIONS: dict[str, str] = {
    name: "".join(w.title() for w in name.split("_")) for name in (
        "expect_column_distinct_values_to_be_in_set", "expect_column_distinct_values_to_contain_set",
        "expect_column_distinct_values_to_equal_set", "expect_column_max_to_be_between",
        "expect_column_mean_to_be_between", "expect_column_median_to_be_between",
        "expect_column_min_to_be_between", "expect_column_most_common_value_to_be_in_set",
        "expect_column_pair_values_a_to_be_greater_than_b", "expect_column_pair_values_to_be_equal",
        "expect_column_pair_values_to_be_in_set", "expect_column_proportion_of_non_null_values_to_be_between",
        "expect_column_proportion_of_unique_values_to_be_between", "expect_column_quantile_values_to_be_between",
        "expect_column_stdev_to_be_between", "expect_column_sum_to_be_between", "expect_column_to_exist",
        "expect_column_type_to_be", "expect_column_unique_value_count_to_be_between",
        "expect_column_value_lengths_to_be_between", "expect_column_value_lengths_to_equal",
        "expect_column_value_z_scores_to_be_less_than", "expect_column_values_to_be_between",
        "expect_column_values_to_be_dateutil_parseable", "expect_column_values_to_be_decreasing",
        "expect_column_values_to_be_in_set", "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_be_increasing", "expect_column_values_to_be_json_parseable",
        "expect_column_values_to_be_null", "expect_column_values_to_be_of_type",
        "expect_column_values_to_be_unique", "expect_column_values_to_match_json_schema",
        "expect_column_values_to_match_like_pattern", "expect_column_values_to_match_like_pattern_list",
        "expect_column_values_to_match_regex", "expect_column_values_to_match_regex_list",
        "expect_column_values_to_match_strftime_format", "expect_column_values_to_not_be_in_set",
        "expect_column_values_to_not_be_null", "expect_column_values_to_not_be_outliers",
        "expect_column_values_to_not_match_like_pattern", "expect_column_values_to_not_match_like_pattern_list",
        "expect_column_values_to_not_match_regex", "expect_column_values_to_not_match_regex_list",
        "expect_compound_columns_to_be_unique", "expect_multicolumn_sum_to_equal",
        "expect_multicolumn_values_to_be_equal", "expect_multicolumn_values_to_be_unique",
        "expect_query_results_to_match_comparison", "expect_select_column_values_to_be_unique_within_record",
        "expect_table_column_count_to_be_between", "expect_table_column_count_to_equal",
        "expect_table_columns_to_match_ordered_list", "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between", "expect_table_row_count_to_equal",
        "expect_table_row_count_to_equal_other_table",
    )
}
# GX's name for it does not title-case into its class name (KL is one word)
GX_EXPECTATIONS["expect_column_kl_divergence_to_be_less_than"] = "ExpectColumnKLDivergenceToBeLessThan"


def _close(value: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for a likely typo of one of ``known``, else ''."""
    match = closest(value, known)
    return f" (did you mean {match}?)" if match else ""


def _type_known(name: str) -> bool:
    """Whether a column can ever pass a ColumnRule.type of ``name``: one of COLUMN_TYPES, or
    another numpy dtype name (float16, datetime64[ns]: pandas engine only). GX's pandas check
    also resolves names that no column's dtype ever matches (Int, Float: Python names in another
    case; pandas dtype classes such as Int64Dtype; list, dict); the gate would fail every run."""
    if name in COLUMN_TYPES:
        return True
    import numpy as np

    try:
        np.dtype(name)
        return True
    except (TypeError, ValueError):
        return False


class ColumnRule(BaseModel):
    """What one column must satisfy."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML's `yes` is no bound
    type: str | None = Field(None, description="pandas dtype name, e.g. float32, int32, object")
    not_null: bool = Field(True, description="no nulls allowed")
    min: YamlNumber | None = Field(None, description="inclusive lower bound")
    max: YamlNumber | None = Field(None, description="inclusive upper bound")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        # a misspelt type would fail every run as if the data were wrong: refuse it on load
        if value is not None and not _type_known(value):
            raise ValueError(f"not a column type the gate can check{_close(value, COLUMN_TYPES)}; use one of "
                             f"{', '.join(COLUMN_TYPES)} (both engines), or another numpy dtype name such as "
                             f"float16 (pandas engine only)")
        return value

    @field_validator("min", "max")
    @classmethod
    def _finite_bound(cls, value: float | None, info: ValidationInfo) -> float | None:
        # every comparison with NaN is false (every value would fail); an infinite bound is none
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number, so no value could be judged against it; "
                             f"give a number, or leave {info.field_name} out for no bound")
        return value

    @field_validator("max")
    @classmethod
    def _not_below_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min")
        if value is not None and low is not None and value < low:
            raise ValueError(f"below min={low:g}: no value could pass; swap min and max, or fix one")
        return value


class ExpectationSpec(BaseModel):
    """Any Great Expectations 1.x expectation: its type and its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str = Field(description="e.g. expect_column_values_to_match_regex")
    kwargs: dict = Field(default_factory=dict, description="the expectation's arguments")

    @field_validator("type")
    @classmethod
    def _known_expectation(cls, value: str) -> str:
        if value not in GX_EXPECTATIONS:
            raise ValueError(f"not a Great Expectations 1.x expectation type{_close(value, GX_EXPECTATIONS)}; "
                             f"use one from gx.expectations in snake case, e.g. "
                             f"expect_column_values_to_be_between")
        return value

    @field_validator("kwargs")
    @classmethod
    def _conditions_in_gx_syntax(cls, kwargs: dict) -> dict:
        """A row condition for the pandas or Spark parser is handed to ``DataFrame.query`` or
        ``F.expr`` as code: ``@pd.io.common.os.system(...)`` in a spec would run on the worker.
        Only Great Expectations' own condition syntax, which GX parses into column comparisons, is
        taken (see ``_check_condition`` for what it builds)."""
        parser, condition = kwargs.get("condition_parser"), kwargs.get("row_condition")
        if "condition_parser" in kwargs and parser != GX_CONDITION_PARSER:
            raise FieldValueError("condition_parser", parser, CONDITION_FIX)
        if "row_condition" in kwargs and not isinstance(condition, str):
            raise FieldValueError("row_condition", condition, CONDITION_FIX)
        if "row_condition" in kwargs and parser != GX_CONDITION_PARSER:
            raise FieldValueError("condition_parser", parser, CONDITION_FIX)
        return kwargs


GX_CONDITION_PARSER = "great_expectations"
CONDITION_FIX = ("a row condition is taken only as text in Great Expectations' own syntax, with condition_parser: "
                 "great_expectations (e.g. row_condition: 'col(\"distance_km\")>0'); the pandas and spark "
                 "parsers run the condition as code on the worker")


def _argument_problems(exc: Exception) -> str:
    """Each bad argument once, with pydantic's first complaint about it: a union-typed argument
    (min_value: float | dict | date | datetime) otherwise gets one line per member."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first: dict[str, str] = {}
    for e in errors():
        name = ".".join(str(p) for p in e.get("loc", ())) or "kwargs"
        first.setdefault("kwargs" if name == "__root__" else name, e.get("msg", ""))
    return "; ".join(f"{name}: {msg}" for name, msg in first.items())


class DriftConfig(BaseModel):
    """How far a dataset's columns may move from the previous committed version of the dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML's `yes` is no limit
    columns: list[str] | None = Field(None, description="columns to watch (default: all numeric); a string "
                                                         "column's null rate only")
    # null turns a check off; infinity is refused rather than read as "off"
    max_mean_shift_std: YamlFloat | None = Field(0.5, gt=0, description="|mean - previous mean| / previous std")
    max_std_ratio: YamlFloat | None = Field(2.0, gt=1, description="max(std/prev std, prev std/std)")
    max_null_rate_increase: YamlFloat | None = Field(0.01, ge=0, description="null rate minus previous null rate")


Engine = Literal["auto", "pandas", "spark"]

class DataGateConfig(BaseModel):
    """A data-gate suite: row-count floor, per-column rules, any GX expectation, drift, engine."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML's `yes` is no row count
    min_rows: dict[Literal["train", "validation"], NonNegativeInt] = Field(
        default_factory=lambda: {"train": 1000, "validation": 200},
        description="minimum rows per split (GX passes on empty input); a split left out needs 1")
    columns: dict[str, ColumnRule] = Field(default_factory=dict, description="shorthand per column")
    expectations: list[ExpectationSpec] = Field(default_factory=list, description="any other GX expectation")
    drift: DriftConfig | None = Field(None, description="compare with the previous dataset version")
    engine: Engine = Field("auto", description="auto: Spark for splits of spark_min_rows or more "
                                               "(rows from the dataset manifest), pandas below")
    spark_min_rows: int = Field(2_000_000, ge=1, description="with engine auto: the split size from "
                                                             "which Spark validates it instead of pandas")
    spark_master: str = Field("local[*]", description="master of the gate's in-process SparkSession")
    max_missing_feature_days: NonNegativeInt | None = Field(
        None, description="most days of its window a dataset may lack feature partitions for (its manifest's "
                          "missing_feature_days); null: any number, as while a pipeline's first windows fill")

    @field_validator("spark_master")
    @classmethod
    def _no_login(cls, value: str) -> str:
        # the gate's config is written into its manifest and shown in errors
        if redacted(value) != value:  # any login, user alone included: the master needs none
            raise ValueError("holds a login: the gate's config is kept in its manifest; give the master "
                             "without credentials (spark://host:7077, k8s://https://host) and the "
                             "credentials through Spark's own settings")
        return value

    def engine_for(self, rows: int) -> str:
        """The engine that validates a split of ``rows`` rows (the manifest's count: no data read)."""
        if self.engine != "auto":
            return self.engine
        return "spark" if rows >= self.spark_min_rows else "pandas"


def spark_types(column: str, type_: str) -> tuple[str, ...]:
    """The Spark type names a ColumnRule.type allows; a clear ConfigError when it has none."""
    if type_ in COLUMN_TYPES:
        return tuple(spark for _, spark in COLUMN_TYPES[type_])
    raise ConfigError(f"data_gate.columns.{column}.type", type_,
                      f"the Spark engine knows {sorted(COLUMN_TYPES)}; use one of them, or set "
                      f"data_gate.engine: pandas to keep this pandas dtype")


def spark_type(column: str, type_: str) -> str:
    """The Spark type name of a ColumnRule.type that names one dtype (benchmarks/gates.py compares
    a schema with it); int and float allow several, see spark_types."""
    names = spark_types(column, type_)
    if len(names) != 1:
        raise ValueError(f"data_gate.columns.{column}.type {type_!r} allows {list(names)}: use spark_types")
    return names[0]


def check_spark_types(cfg: DataGateConfig) -> None:
    """Fail before reading any data if a column type has no Spark equivalent and Spark may run."""
    if cfg.engine != "pandas":
        for col, rule in sorted(cfg.columns.items()):
            if rule.type:
                spark_types(col, rule.type)


def _type_expectation(column: str, type_: str, engine: str):
    """GX's type check of a ColumnRule.type in the engine's names (COLUMN_TYPES): one type, or a
    type list for a name that allows several. A numpy name outside COLUMN_TYPES (pandas only)
    goes to GX as it is."""
    import great_expectations as gx

    if engine == "spark":
        names = spark_types(column, type_)
    else:
        names = tuple(pandas for pandas, _ in COLUMN_TYPES.get(type_, ((type_, ""),)))
    if len(names) == 1:
        return gx.expectations.ExpectColumnValuesToBeOfType(column=column, type_=names[0])
    return gx.expectations.ExpectColumnValuesToBeInTypeList(column=column, type_list=list(names))


def _gx_expectation(i: int, spec: ExpectationSpec, source: str = ""):
    import great_expectations as gx

    cls = getattr(gx.expectations, GX_EXPECTATIONS.get(spec.type, ""), None)
    if cls is None:  # a spec checked on load names one; a GX upgrade may have dropped it
        raise ConfigError(f"{source}data_gate.expectations[{i}].type", spec.type,
                          "use a Great Expectations 1.x expectation type, e.g. expect_column_values_to_be_between")
    try:
        expectation = cls(**spec.kwargs)
    except Exception as exc:  # pydantic (v1) validation of the arguments, or GX's own (a row_condition's parser)
        raise ConfigError(f"{source}data_gate.expectations[{i}].kwargs", spec.kwargs,
                          f"the arguments of {spec.type} do not fit it: {_argument_problems(exc)}; fix them "
                          f"(each expectation's arguments are in the Great Expectations docs)") from None
    _check_condition(getattr(expectation, "row_condition", None), f"{source}data_gate.expectations[{i}].kwargs"
                                                                  f".row_condition")
    return expectation


def _check_condition(condition: Any, field: str) -> None:
    """What GX built of a row condition is column comparisons, nullity tests, and/or of those,
    on plain column names: a name is pasted into pandas' query between backticks, so a name
    holding one would be code again; a pass-through condition is code itself."""
    from great_expectations.expectations.row_conditions import (AndCondition, ComparisonCondition,
                                                                 NullityCondition, OrCondition)

    if condition is None:
        return
    if isinstance(condition, (AndCondition, OrCondition)):
        for part in condition.conditions:
            _check_condition(part, field)
        return
    if not isinstance(condition, (ComparisonCondition, NullityCondition)):
        raise ConfigError(field, str(condition), CONDITION_FIX)
    name = condition.column.name
    if not (isinstance(name, str) and name.isidentifier()):
        raise ConfigError(field, name, "a condition's column is a plain column name (letters, digits and '_')")


# the expectation arguments that name one column or several
_COLUMN_ARGS = ("column", "column_A", "column_B")
_COLUMN_LIST_ARGS = ("column_list", "column_set")


def check_gate_columns(cfg: DataGateConfig, columns: list[str], source: str = "") -> None:
    """Every column the gate names is one of the dataset's ``columns``: a misspelt one
    (``distnace_km``) is refused when the DAG is parsed, not by the gate after the Spark stages
    committed, in a list of failures of checks on a column that is not there. (Great
    Expectations 1.x has no expectation of a column's absence, which could name any.)"""
    where = f"{source}: " if source else ""
    known = sorted(columns)

    def check(field: str, name: object) -> None:
        if name not in columns:
            raise ConfigError(f"{where}data_gate.{field}", name, f"the dataset has no such column"
                                                                 f"{_close(str(name), known)}; its columns are {known}")

    for col in cfg.columns:
        check(f"columns.{col}", col)
    for i, spec in enumerate(cfg.expectations):
        for arg in _COLUMN_ARGS:
            if isinstance(spec.kwargs.get(arg), str):
                check(f"expectations[{i}].kwargs.{arg}", spec.kwargs[arg])
        for arg in _COLUMN_LIST_ARGS:
            if isinstance(spec.kwargs.get(arg), list):
                for name in spec.kwargs[arg]:
                    check(f"expectations[{i}].kwargs.{arg}", name)
    for col in (cfg.drift.columns or []) if cfg.drift else []:
        check("drift.columns", col)


def check_expectations(cfg: DataGateConfig, source: str = "") -> None:
    """Build every listed expectation once, so that a misspelt argument fails the first task
    of a run (every task checks the pipeline), not the gate after the Spark stages committed.
    Not at DAG parse: importing Great Expectations there would cost every parse seconds."""
    for i, spec in enumerate(cfg.expectations):
        _gx_expectation(i, spec, f"{source}: " if source else "")


def _expectations(cfg: DataGateConfig, engine: str = "pandas") -> list:
    import great_expectations as gx

    E = gx.expectations
    out = []
    for col, rule in sorted(cfg.columns.items()):
        out.append(E.ExpectColumnToExist(column=col))
        if rule.type:
            out.append(_type_expectation(col, rule.type, engine))
        # Aggregate expectations (one number per column) rather than row-wise ones: the same
        # verdict, an observed value in the message, and 7x faster on 1M rows (docs/benchmarks.md).
        if rule.not_null:
            out.append(E.ExpectColumnProportionOfNonNullValuesToBeBetween(column=col, min_value=1.0))
        if rule.min is not None:
            out.append(E.ExpectColumnMinToBeBetween(column=col, min_value=rule.min))
        if rule.max is not None:
            out.append(E.ExpectColumnMaxToBeBetween(column=col, max_value=rule.max))
    out += [_gx_expectation(i, spec) for i, spec in enumerate(cfg.expectations)]
    # A suite is a set: drop repeats (as ExpectationSuite.add_expectation would, but without its
    # pairwise comparison of every expectation with every other, 0.2 s for this suite)
    seen, unique = set(), []
    for exp in out:
        key = json.dumps([exp.expectation_type, exp.configuration.kwargs], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            unique.append(exp)
    return unique


def _in_config_words(conf, r: dict, cfg: DataGateConfig) -> tuple[dict, dict]:
    """(kwargs, result) of a type check as the config says it, the same on both engines: the
    rule's own type name for the check it generated (GX was given 'str' or 'StringType' for
    'string'), pandas names for Spark's type names in a type list and in the observed type."""
    kwargs = {k: v for k, v in conf.kwargs.items() if k not in ("batch_id", "column")}
    if conf.type not in ("expect_column_values_to_be_of_type", "expect_column_values_to_be_in_type_list"):
        return kwargs, r
    rule = cfg.columns.get(conf.kwargs.get("column"))
    generated = {name for pair in COLUMN_TYPES.get(rule.type, ()) for name in pair} if rule and rule.type else set()
    if kwargs.get("type_") in generated:
        kwargs["type_"] = rule.type
    elif kwargs.get("type_") in _PANDAS_NAMES:  # a Spark name in the spec's own expectations
        kwargs["type_"] = _PANDAS_NAMES[kwargs["type_"]]
    if "type_list" in kwargs:
        kwargs["type_list"] = [_PANDAS_NAMES.get(t, t) for t in kwargs["type_list"]]
    if r.get("observed_value") in _PANDAS_NAMES:
        r = {**r, "observed_value": _PANDAS_NAMES[r["observed_value"]]}
    return kwargs, r


def _gx_errors(exception_info: dict | None) -> list[str]:
    """The messages of the exceptions GX caught for one result, each once. GX 1.x keys a metric's
    exception by the metric's id ({id: {raised_exception, exception_message, ...}}); an error
    raised by the expectation itself is one flat record."""
    if not exception_info:
        return []
    records = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [rec.get("exception_message") or "no message" for rec in records
                if isinstance(rec, dict) and rec.get("raised_exception")]
    return list(dict.fromkeys(messages))


def _describe_failure(split: str, res, columns, cfg: DataGateConfig) -> str:
    conf = res.expectation_config
    kwargs, r = _in_config_words(conf, res.result or {}, cfg)
    column = conf.kwargs.get("column")
    if "observed_value" in r:
        observed = f"observed {_shown(r['observed_value'])}"
    elif "unexpected_count" in r:
        observed = (f"{r['unexpected_count']} unexpected ({r.get('unexpected_percent') or 0:.2f}%), "
                    f"e.g. {(r.get('partial_unexpected_list') or [])[:3]}")
    elif column not in columns:
        observed = "column missing"
    else:
        observed = "no result"
    errors = _gx_errors(res.exception_info)
    if errors:
        observed += f" (error: {'; '.join(errors)})"
    return f"{split}.{column or '*'}: {conf.type} {kwargs or ''} -> {observed}"


def _shown(value) -> str:
    """An observed value as failure messages print it, the same on both engines: a float that a
    float32 holds exactly in its shortest float32 form (pandas hands back a numpy float32 for a
    float32 column, Spark a Python float with every digit of it), other numbers as plain Python."""
    import numpy as np

    if isinstance(value, (float, np.floating)) and math.isfinite(value):
        return str(np.float32(value)) if float(np.float32(value)) == float(value) else str(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return repr(value)


def _is_spark(df) -> bool:
    return type(df).__module__.startswith("pyspark.")


def _nan_as_null(df):
    """NaN in float columns becomes null: pandas counts NaN as missing, Spark does not (and Spark's
    max of a column holding NaN is NaN), so without this the engines would disagree."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType

    floats = {f.name for f in df.schema.fields if isinstance(f.dataType, (FloatType, DoubleType))}
    if not floats:
        return df
    return df.select(*[F.when(F.isnan(F.col(c)), F.lit(None)).otherwise(F.col(c)).alias(c) if c in floats
                       else F.col(c) for c in df.columns])


def validate_frames(frames: dict, cfg: DataGateConfig, docs_dir: Path | None = None) -> tuple[list[str], dict]:
    """Run the suite on each split's DataFrame; return (failures, evidence).

    A split given as a pandas DataFrame is validated by GX's pandas engine, a Spark DataFrame by
    GX's Spark engine; both report failures in the same words, and the evidence names the engine.
    With ``docs_dir``, each split's validation result is also rendered as a Great Expectations
    Data Docs page (``<split>.html``) for people to read.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.validator.v1_validator import Validator

    import dlpipe.gx_pandas  # noqa: F401  (registers the dlpipe_pandas datasource type)

    failures: list[str] = []
    evidence: dict = {"splits": {}}
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bars in task logs
    sources: dict = {}
    for split, df in sorted(frames.items()):
        engine = "spark" if _is_spark(df) else "pandas"
        if engine not in sources:
            with warnings.catch_warnings():  # GX warns about its own default for a deprecated field
                warnings.simplefilter("ignore", DeprecationWarning)
                sources[engine] = (ctx.data_sources.add_spark("dlpipe_spark") if engine == "spark"
                                   else ctx.data_sources.add_dlpipe_pandas("dlpipe"))
        if engine == "spark":
            df = _nan_as_null(df)
        suite = gx.ExpectationSuite(name=f"data_gate_{split}", expectations=_expectations(cfg, engine))
        batch_definition = sources[engine].add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        # A Validator on the batch definition loads the batch once (Batch.validate would load it a
        # second time). A pandas frame carrying its committed fingerprint is not hashed again
        # row by row (dlpipe.gx_pandas).
        # BASIC keeps counts and up to 20 example values per failure, at half the cost of SUMMARY.
        result = Validator(batch_definition=batch_definition, batch_parameters={"dataframe": df},
                           result_format="BASIC").validate_expectation_suite(suite)
        rows = df.count() if engine == "spark" else len(df)  # GX persisted the Spark frame: no re-read
        if engine == "spark":
            df.unpersist()
        floor = cfg.min_rows.get(split, 1)
        if rows < floor:
            failures.append(f"{split}: row count {rows} is below the minimum {floor}")
        if len(result.results) != len(suite.expectations):
            failures.append(f"{split}: {len(result.results)} of {len(suite.expectations)} expectations ran")
        # sorted: GX orders results by its metric graph, which differs between engines
        failures += sorted(_describe_failure(split, r, df.columns, cfg) for r in result.results if not r.success)
        evidence["splits"][split] = {"rows": rows, "engine": engine, "expectations": len(result.results),
                                     "failed": sum(not r.success for r in result.results),
                                     "result": result.to_json_dict()}
        if docs_dir is not None:
            docs_dir.mkdir(parents=True, exist_ok=True)
            (docs_dir / f"{split}.html").write_text(render_data_docs(result))
    return failures, evidence


def render_data_docs(result) -> str:
    """The Data Docs HTML page of one validation result (GX's own renderer and template). GX
    writes the values it observed (unexpected values, the most common value) into the page
    unescaped: a trip id of ``<script>...</script>`` in a team's data ran in the reviewer's
    browser. They are escaped first, on a copy; the result committed as JSON keeps them as they are."""
    import copy

    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    shown = copy.deepcopy(result)
    for r in shown.results:
        r.result = _html_escaped(r.result)
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(shown))


def _html_escaped(value: Any) -> Any:
    """``value`` with every string in it (mappings, lists and tuples looked into) HTML-escaped."""
    import html

    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {k: _html_escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_html_escaped(v) for v in value)
    return value


def previous_dataset(dataset: dict) -> dict | None:
    """The version the drift check compares with: the newest committed version of the same
    dataset whose partition comes before this one, else (the first window, or a dataset with a
    single partition such as the digits corpus) the newest version of this partition committed
    before this one, for instance by older code or an older scikit-learn."""
    root = commit.StageKey(dataset["stage"], dataset["name"]).dir().parent
    partitions: dict[str, list[dict]] = {}
    for mfile in root.glob("*/manifests/*.json"):
        m = commit.read_manifest(mfile)
        if m["id"] != dataset["id"]:
            partitions.setdefault(m["partition"], []).append(m)
    if earlier := [p for p in partitions if p < dataset["partition"]]:
        return commit.in_commit_order(partitions[max(earlier)])[-1]
    same = commit.in_commit_order([*partitions.get(dataset["partition"], []), dataset])
    return same[same.index(dataset) - 1] if same.index(dataset) else None


def _null_rate(st: dict) -> float:
    return st["nulls"] / max(1, st["count"] + st["nulls"])


def _not_finite(st: dict) -> str:
    """'mean nan, std inf' for a column's statistics that are not finite numbers, else ''. NaN
    and infinity compare false with every threshold: a drift check on them would always pass."""
    return ", ".join(f"{k} {st[k]!r}" for k in ("mean", "std")
                     if st.get(k) is not None and not math.isfinite(st[k]))


def _column_drift(c: str, a: dict, b: dict, ids: dict[str, str], cfg: DriftConfig) -> tuple[list[str], dict]:
    """(failures, report) of one column: ``a`` its statistics in this dataset, ``b`` in the
    previous one; ``ids`` names both datasets ('this', 'the previous') for the messages."""
    failures = []
    nulls = _null_rate(a) - _null_rate(b)
    unusable = {which: _not_finite(st) for which, st in (("this", a), ("the previous", b))}
    for which, stats in unusable.items():
        if stats:
            failures.append(f"drift.{c}: {stats} in {which} dataset: not finite numbers, so its drift cannot be "
                            f"judged; the column holds infinite values, or the statistics predate NaN counting as "
                            f"missing: materialize it again ({ids[which]})")
    # one side without usable values: only the null rate compares (an all-null column has no mean)
    comparable = not any(unusable.values()) and a.get("mean") is not None and b.get("mean") is not None
    shift = ratio = None
    if comparable:
        # A column that became constant (a broken join filling a default into every row) is drift
        # beyond any threshold (None in the report); it read as "no change". A column that was
        # constant in the previous dataset gives no scale to measure against (a new pipeline's
        # first window, before any history): it is not judged (None), as before.
        sa, sb = a.get("std") or 0.0, b.get("std") or 0.0
        shift = abs(a["mean"] - b["mean"]) / sb if sb else None
        ratio = max(sa / sb, sb / sa) if sa and sb else None
        if cfg.max_mean_shift_std is not None and shift is not None and shift > cfg.max_mean_shift_std:
            failures.append(f"drift.{c}: mean moved {shift:.2f} previous std ({b['mean']:.4g} -> "
                            f"{a['mean']:.4g}), threshold {cfg.max_mean_shift_std}")
        became_constant = sb and not sa
        if cfg.max_std_ratio is not None and (became_constant or (ratio is not None and ratio > cfg.max_std_ratio)):
            how = "the column became constant: std" if became_constant else f"std changed {ratio:.2f}x"
            failures.append(f"drift.{c}: {how} ({sb:.4g} -> {sa:.4g}), threshold {cfg.max_std_ratio}")
    if cfg.max_null_rate_increase is not None and nulls > cfg.max_null_rate_increase:
        failures.append(f"drift.{c}: null rate rose by {nulls:.4f}, threshold {cfg.max_null_rate_increase}")
    return failures, {"mean_shift_std": shift, "std_ratio": ratio, "null_rate_increase": nulls}


def check_drift(dataset: dict, previous: dict | None, cfg: DriftConfig) -> tuple[list[str], dict]:
    """Compare per-column mean, std and null rate with the previous version (train split)."""
    if previous is None:
        return [], {"previous": None, "note": "no earlier version of this dataset: nothing to compare",
                    "columns": {}}
    cur = dataset["summary"].get("stats", {}).get("train")
    old = previous["summary"].get("stats", {}).get("train")
    if not cur or not old:
        return [], {"previous": previous["id"], "note": "no column statistics to compare", "columns": {}}
    # numeric columns: a mean in either version (a column that lost every value has none now)
    cols = cfg.columns or [c for c, st in cur.items()
                           if c in old and (st.get("mean") is not None or old[c].get("mean") is not None)]
    failures, report = [], {}
    ids = {"this": dataset["id"], "the previous": previous["id"]}
    for c in cols:
        if c not in cur or c not in old:
            failures.append(f"drift.{c}: column missing from {'this' if c not in cur else 'the previous'} dataset")
            continue
        column_failures, report[c] = _column_drift(c, cur[c], old[c], ids, cfg)
        failures += column_failures
    return failures, {"previous": previous["id"], "columns": report}


def run_data_gate(dataset: dict, cfg: DataGateConfig, *, run: RunContext, name: str = "eta_data") -> StageResult:
    """Validate every split of a committed dataset; commit the verdict or raise GateFailed.

    Each split goes to the engine ``cfg.engine_for`` picks from the manifest's row count: pandas
    reads it into memory, Spark reads its Parquet files in a local SparkSession.
    """
    check_spark_types(cfg)
    # The drift check's reference is an input like the dataset: a gate that found no earlier
    # version (a backfill, catch-up runs in parallel) is judged again once one is committed.
    previous = previous_dataset(dataset) if cfg.drift is not None else None

    def produce(attempt: Path) -> dict:
        rows = dataset["summary"].get("rows", {})
        engines = {split: cfg.engine_for(rows.get(split, 0)) for split in dataset["summary"]["splits"]}
        spark = data_gate_spark(cfg.spark_master) if "spark" in engines.values() else None
        frames = {split: read_split(dataset, split, spark if engine == "spark" else None)
                  for split, engine in engines.items()}
        failures, evidence = validate_frames(frames, cfg, docs_dir=attempt / "data_docs")
        failures += window_failures(dataset, cfg)
        drift = None
        if cfg.drift is not None:
            drift_failures, drift = check_drift(dataset, previous, cfg.drift)
            failures += drift_failures
        evidence["drift"] = drift
        (attempt / "validation.json").write_text(json.dumps(evidence, indent=1, default=str))
        if failures:
            raise GateFailed(f"data gate on {dataset['id']} (evidence: {attempt})", failures, DATA_GATE_NEXT)
        checks = sum(s["expectations"] for s in evidence["splits"].values())
        log.info("data gate passed: %d expectations on %s (engines %s)", checks, list(frames), engines)
        return {"verdict": "passed", "expectations": checks, "dataset": dataset["id"], "engines": engines,
                "rows": {s: v["rows"] for s, v in evidence["splits"].items()},
                "drift": {"previous": (drift or {}).get("previous"), "columns": len((drift or {}).get("columns", {}))}}

    return commit.run_stage(StageKey("gates", name, dataset["partition"]), inputs=[dataset] + ([previous] if previous else []),
                            config=cfg.model_dump(), code={"sources_hash": sources_hash([__file__])},
                            run=run, produce=produce, unread=(previous["id"],) if previous else ())


def window_failures(dataset: dict, cfg: DataGateConfig) -> list[str]:
    """A window with more days missing than ``max_missing_feature_days``: the dataset stage
    leaves out days whose features are not committed (a day that failed, a backfill that had not
    reached it) with only a warning, and a model trained on fewer days still passes every other
    check."""
    missing = dataset["summary"].get("missing_feature_days") or []
    limit = cfg.max_missing_feature_days
    if limit is None or len(missing) <= limit:
        return []
    return [f"window: no feature partition for {len(missing)} of its days {missing}, more than "
            f"max_missing_feature_days={limit}; run the feature task for those days, then this run's dataset "
            f"task again (or raise the limit)"]


# What the on-call engineer does next, at the end of a gate's failure (docs/operations.md has more)
DATA_GATE_NEXT = ("next: the window's newest day (this run's own) is the usual suspect. Commit corrected raw files "
                  "(dlpipe ingest-raw NAME --day D FILES), then `airflow tasks clear DAG -t extract_features "
                  "--downstream -s D -e D+LOOKBACK --yes`; if the data is right, change the expectation in the spec. "
                  "docs/operations.md, When a gate fails")
MODEL_GATE_NEXT = ("next: retrain (change train: in the spec, then clear train with --downstream; unchanged, every "
                   "stage skips and the same model is judged again), or accept the model by changing this gate "
                   "in the spec through review and clearing model_gate with --downstream. docs/operations.md, "
                   "When a gate fails")


def split_fingerprint(dataset: dict, split: str) -> str:
    """SHA-256 over the committed (path, SHA-256) of a split's Parquet files: identifies exactly
    the data the gate validated, read from the manifest at no cost."""
    files = sorted((f["path"], f["sha256"]) for f in dataset["outputs"]["files"]
                   if f["path"].startswith(f"{split}/") and f["path"].endswith(".parquet"))
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


# Manifest column kinds (feature_jobs.dataset_stage.DATASET_COLUMNS) as a pandas dtype and a Spark type
_KINDS = {"string": ("object", "string"), "float": ("float32", "float"), "int": ("int32", "int"),
          "binary": ("object", "binary")}


def read_split(dataset: dict, split: str, spark=None):
    """One split of a committed dataset as a pandas DataFrame, or with ``spark`` a Spark DataFrame.

    Only the Parquet files the manifest vouches for are read. A split without files is an empty
    frame with the manifest's column types, so an empty split fails on its row count alone. A
    pandas frame carries the split's committed fingerprint (``split_fingerprint``), which GX then
    records instead of hashing every row (``dlpipe.gx_pandas``).
    """
    root = commit.location(dataset)
    paths = [p for p in commit.files(dataset, ".parquet") if p.parent == root / split]
    columns = [(c, _KINDS.get(kind, ("object", "string"))) for c, kind in dataset["summary"]["columns"]]
    if spark is not None:
        if paths:
            return spark.read.parquet(*(f"file://{p}" for p in paths))
        return spark.createDataFrame([], ", ".join(f"{c} {t[1]}" for c, t in columns))
    import pandas as pd
    import pyarrow.parquet as pq

    from dlpipe.gx_pandas import FINGERPRINT

    if paths:
        df = pq.ParquetDataset(paths, partitioning=None).read().to_pandas()  # no column from the path (window_end=...)
    else:
        df = pd.DataFrame({c: pd.Series([], dtype=t[0]) for c, t in columns})
    df.attrs[FINGERPRINT] = split_fingerprint(dataset, split)
    return df


def data_gate_spark(master: str = "local[*]"):
    """The in-process SparkSession the gate's Spark engine runs on (reused while it lives)."""
    from dlpipe.spark_submit import spark_session

    return spark_session("dlpipe-data-gate", master=master, conf={
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # no progress bars in task logs
    })


class ModelGateConfig(BaseModel):
    """Model thresholds: beat the naive baseline, do not lose to production, no bad slice."""

    # strict: YAML's `yes` is no threshold (it read as 1.0, no ceiling on an error rate); YamlFloat:
    # NaN or infinity would turn a check off
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    metric: str = Field("val_mae", description="metric to judge (lower is better)")
    baseline_metric: str = Field("baseline_mae", description="the naive predictor's value of it")
    min_improvement: YamlFloat = Field(0.10, ge=0, description="required relative gain over the baseline")
    max_value: YamlFloat | None = Field(None, gt=0, description="absolute ceiling on the metric")
    champion_alias: str | None = Field("production", pattern=r"^[a-z][a-z0-9_-]{0,31}$",
                                       description="registry alias of the model to beat (null: no champion check)")
    max_regression: YamlFloat = Field(0.02, ge=0, description="how much worse than the champion, "
                                                              "relative, the candidate may be")

    @field_validator("min_improvement", "max_regression")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if value >= 1:  # 10 for 10% would ask for a negative error, or allow any regression
            hint = f"; for {value:g}% write {value / 100:g}" if value < 100 else ""
            raise ValueError(f"a fraction below 1 (0.10 means 10%){hint}")
        return value
    slice_max_ratio: YamlFloat | None = Field(1.8, gt=1, description="no slice's metric above this times the "
                                                                     "overall value")
    slice_min_rows: int = Field(50, ge=1, description="slices with fewer rows are reported, not judged")
    slice_z: YamlFloat = Field(1.0, ge=0, description="a slice fails only when its metric is above the limit by "
                                                  "more than this many of its standard errors (0: by any amount)")


def _finite(value: Any) -> bool:
    """A real number a threshold can judge: not NaN or infinite, not a string ("3.5" from a
    hand-written metrics file) and not a bool (``True`` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def judge_model(metrics: dict, cfg: ModelGateConfig) -> list[str]:
    """The failed baseline/ceiling checks on training metrics (empty means they pass)."""
    failures = []
    value, base = metrics.get(cfg.metric), metrics.get(cfg.baseline_metric)
    reported = sorted(k for k, v in metrics.items() if _finite(v))  # what a misnamed metric was called instead
    if not _finite(value):
        return [f"{cfg.metric}: missing or not a finite number ({value!r}); the training run must report it "
                f"in metrics.json as a JSON number (it reported {reported})"]
    if not _finite(base):
        return [f"{cfg.baseline_metric}: missing or not a finite number ({base!r}); the training run must "
                f"report it in metrics.json as a JSON number (it reported {reported})"]
    bound = base * (1 - cfg.min_improvement)
    if value > bound:
        failures.append(f"{cfg.metric}={value:.4f} must be <= {bound:.4f} "
                        f"({cfg.baseline_metric}={base:.4f} improved by {cfg.min_improvement:.0%})")
    if cfg.max_value is not None and value > cfg.max_value:
        failures.append(f"{cfg.metric}={value:.4f} exceeds max_value={cfg.max_value}")
    return failures


def split_mismatch(champion_record: dict, dataset: dict) -> str | None:
    """Why the champion cannot be scored fairly on ``dataset``'s validation rows, if it cannot:
    it was trained under a smaller ``validation_percent``, so some of these validation rows were
    in its training split (the split is by key hash, validation below the percentage: a larger
    share moves training keys into validation), and the comparison would favour it. A smaller
    share keeps a subset of its validation keys: a fair comparison."""
    trained = (((champion_record.get("lineage") or {}).get("config") or {}).get("dataset") or {})
    before, now = trained.get("validation_percent"), (dataset.get("config") or {}).get("validation_percent")
    if before is None or now is None or now <= before:
        return None
    return (f"{champion_record['name']}@{champion_record['version']} was trained with validation_percent={before}, "
            f"this dataset splits with {now}: part of these validation rows were its training rows; judge the "
            f"first model after a split change by hand and promote it with `dlpipe registry promote`")


def feature_mismatch(champion_record: dict, champion_features: list[dict], candidate_features: list[dict]) -> str | None:
    """Why the champion's score on these rows means nothing, if it does: it was trained on
    features made by other feature code or settings (after a feature release, say), so the same
    column can hold another quantity (a count become a daily mean) and its error is arbitrary.
    A dataset never mixes two feature versions for the same reason. Manifests are the feature
    partitions each model's dataset was built from; no champion manifests: nothing to compare."""
    def versions(manifests: list[dict]) -> set[tuple[str, str]]:
        return {(m["code"]["sources_hash"], fingerprint(m["config"])) for m in manifests}

    if not champion_features or versions(champion_features) == versions(candidate_features):
        return None
    code = lambda ms: ", ".join(sorted({m["code"]["sources_hash"][:12] for m in ms}))  # noqa: E731
    ref = f"{champion_record['name']}@{champion_record['version']}"
    return (f"{ref} was trained on features made by other feature code or settings (feature sources {code(champion_features)}, "
            f"this dataset's {code(candidate_features)}): its error on these rows does not measure it. Judge the first "
            f"model after a feature change on its other checks: set model_gate.champion_alias: null in the spec for "
            f"one run (through review), clear model_gate with --downstream, then restore the alias")


def judge_champion(candidate: dict, champion: dict | None, cfg: ModelGateConfig) -> tuple[list[str], str]:
    """Candidate vs the production model, both evaluated on the same rows: (failures, note).

    Evaluations are ``{"label", "value", "rows", "slices"}`` with lower values better (see
    ``training.evaluate``)."""
    if cfg.champion_alias is None:
        return [], "no champion check (model_gate.champion_alias is null)"
    if champion is None:
        return [], f"no model holds the {cfg.champion_alias!r} alias yet: the first model passes"
    if why := champion.get("split_mismatch") or champion.get("feature_mismatch"):
        return [f"champion: {why}"], f"cannot compare the candidate with {champion.get('ref')}"
    what = candidate.get("label", "metric")
    unusable = [f"{who}: {what} is {e.get('value')!r}, not a finite number; evaluate it again (the model or "
                f"the validation rows give no usable value)" for who, e in (("candidate", candidate),
                (champion.get("ref", "champion"), champion)) if not _finite(e.get("value"))]
    if unusable:  # every comparison with NaN is false: it would pass
        return unusable, f"cannot compare the candidate with {champion.get('ref')}"
    bound = champion["value"] * (1 + cfg.max_regression)
    note = (f"candidate {what} {candidate['value']:.4f} vs {champion['ref']} {what} {champion['value']:.4f} "
            f"on the same {candidate['rows']} rows")
    if candidate["value"] > bound:
        return [f"champion: {what} {candidate['value']:.4f} is worse than {champion['ref']} "
                f"({champion['value']:.4f}) by more than {cfg.max_regression:.0%} (limit {bound:.4f})"], note
    return [], note


def judge_slices(evaluation: dict, cfg: ModelGateConfig) -> list[str]:
    """The slices whose metric is above ``slice_max_ratio`` times the overall one, beyond noise.

    A slice's metric is a mean over its rows, so a small slice's value is noisy: on 30 images
    with a 2% overall error rate, 3 unlucky errors already give 5x the overall rate. A slice
    therefore fails only when its value less ``slice_z`` standard errors (the evaluator's
    ``stderr``: the per-row loss's standard deviation over the square root of its rows) is still
    above the limit. On the digits pipeline's 30-image digits, one standard error takes the
    point rule's false alarms on a model whose errors fall anywhere from 16% to 0.05%, and
    still fails a model that gets half of one digit wrong 99% of the time (simulated in
    tests/unit/test_gates.py). An evaluator that reports no ``stderr`` is judged on the value.
    """
    if cfg.slice_max_ratio is None or evaluation.get("value") == 0:
        return []
    what = evaluation.get("label", "metric")
    if not _finite(evaluation.get("value")):
        return [f"slices: the overall {what} is {evaluation.get('value')!r}, not a finite number, so no slice "
                f"can be judged against it"]
    limit = evaluation["value"] * cfg.slice_max_ratio
    failures = []
    for name, sl in sorted(evaluation["slices"].items()):
        if sl["rows"] < cfg.slice_min_rows or sl["value"] is None:
            continue
        if not _finite(sl["value"]):
            failures.append(f"slice {name}: {what} is {sl['value']!r} on {sl['rows']} rows, not a finite number")
            continue
        stderr = sl.get("stderr") or 0.0
        if sl["value"] - cfg.slice_z * stderr > limit:
            failures.append(f"slice {name}: {what} {sl['value']:.4f} (standard error {stderr:.4f} on {sl['rows']} rows) "
                            f"is above {cfg.slice_max_ratio} x overall {evaluation['value']:.4f} (= {limit:.4f}) "
                            f"by more than slice_z={cfg.slice_z:g} standard errors")
    return failures


def run_model_gate(training: dict, cfg: ModelGateConfig, *, run: RunContext, name: str = "eta_model",
                   candidate: dict | None = None, champion: dict | None = None) -> StageResult:
    """Judge a training run: baseline, optional ceiling, champion and slices; commit the verdict.

    ``candidate`` and ``champion`` are evaluations on the same validation rows (see
    ``training.evaluate``); both enter the fingerprint, so a new production model, or an
    evaluation that changed (new evaluator code, other validation rows), means a new verdict.
    """
    def produce(attempt: Path) -> dict:
        metrics = training["summary"]["metrics"]
        failures = judge_model(metrics, cfg)
        note = None
        if candidate is not None:
            champ_failures, note = judge_champion(candidate, champion, cfg)
            failures += champ_failures + judge_slices(candidate, cfg)
        evidence = {"metrics": metrics, "candidate": candidate, "champion": champion, "note": note,
                    "failures": failures, "config": cfg.model_dump()}
        (attempt / "verdict.json").write_text(json.dumps(evidence, indent=1))
        if failures:
            raise GateFailed(f"model gate on {training['id']}", failures, MODEL_GATE_NEXT)
        return {"verdict": "passed", cfg.metric: metrics[cfg.metric],
                cfg.baseline_metric: metrics[cfg.baseline_metric], "note": note,
                "champion": champion and {"ref": champion["ref"], champion["metric"]: champion["value"]},
                "candidate": candidate and {candidate["metric"]: candidate["value"]}}

    config = {**cfg.model_dump(), "champion": champion and champion["ref"], "evaluated": candidate is not None,
              "evaluations": {"candidate": candidate, "champion": champion}}
    return commit.run_stage(StageKey("gates", name, training["partition"]), inputs=[training],
                            config=config, code={"sources_hash": sources_hash([__file__])},
                            run=run, produce=produce)
