"""The digits dataset stage under dlpipe's commit protocol.

Apart from the ETA stages (``feature_jobs.feature_stage``, ``feature_jobs.dataset_stage``) so
that an edit here leaves the hash of every ETA feature partition and dataset as it was (a fingerprint covers its stage's own
sources; a year of ETA partitions must not be recomputed for a digits change).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.hashing import content_hash, sources_hash
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit
from dlpipe.spec import write_spec
from feature_jobs import digits, materialize
from feature_jobs.stage_files import SHARED_SOURCES, parquet_rows

# Manifest column kinds of the digits dataset; "image" holds NdarrayCodec bytes.
DIGITS_COLUMNS: list[tuple[str, str]] = [("image_id", "int"), ("image", "binary"), ("label", "int")]


class DigitsConfig(BaseModel):
    """The digits image dataset (scikit-learn's bundled 8x8 images)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no count
    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                      description="the dataset; specs with different dataset settings need different names")
    validation_percent: int = Field(20, ge=1, le=50, description="share of images in validation")
    num_files: int = Field(2, ge=1, le=64, description="files per split")
    row_group_size_mb: int = Field(1, ge=1, le=1024, description="Parquet row-group size")


def materialize_digits(*, config: DigitsConfig, run: RunContext, submit: SparkSubmit) -> StageResult:
    """Commit the digits dataset (skipped when committed with the same config and code)."""
    import sklearn

    key = StageKey("datasets", config.name, "all")
    # materialize.py for the column statistics digits.py takes from it; the scikit-learn version
    # enters the fingerprint beside the sources (commit.code_identity): its bundled images are the input
    code = {"sources_hash": sources_hash([digits.__file__, __file__, materialize.__file__, *SHARED_SOURCES]),
            "scikit_learn": sklearn.__version__}

    def produce(attempt: Path) -> dict:
        spec_path = write_spec(attempt / "spec.json", {"output_dir": str(attempt), **config.model_dump()})
        submit(digits.__file__, ["--spec", str(spec_path)])
        splits = {s: parquet_rows(sorted((attempt / s).glob("*.parquet"))) for s in ("train", "validation")}
        return {
            "rows": splits, "splits": sorted(splits),
            "content_sha256": content_hash(sorted(attempt.glob("*/*.parquet")), attempt, by_name=False),
            "stats": json.loads((attempt / "stats.json").read_text()),
            "columns": DIGITS_COLUMNS, "image": "image", "image_shape": [8, 8], "label": "label",
            "schema": [{"name": "image_id", "numpy_dtype": "int32", "shape": [], "codec": "ScalarCodec"},
                       {"name": "image", "numpy_dtype": "float64", "shape": [8, 8], "codec": "NdarrayCodec"},
                       {"name": "label", "numpy_dtype": "int32", "shape": [], "codec": "ScalarCodec"}],
            "source": f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
        }

    return commit.run_stage(key, inputs=[], config=config.model_dump(), code=code, run=run, produce=produce)
