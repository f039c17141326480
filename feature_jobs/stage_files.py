"""File helpers the Spark stages share (feature, dataset and digits stages).

Apart from the stages themselves because every stage's fingerprint hashes this file: an edit to
one stage must not change the fingerprint of another's committed partitions.
"""

from __future__ import annotations

from pathlib import Path

from feature_jobs import session

# The sources every Spark stage's fingerprint covers besides its own: these helpers and the
# session settings that change a job's output (session.OUTPUT_CONF).
SHARED_SOURCES = [__file__, session.__file__]


def name_parts_by_order(out: Path) -> list[Path]:
    """Rename Spark's ``part-NNNNN-<uuid>...parquet`` files to ``part-NNNNN.parquet``.

    Spark puts a random job UUID in every file name; the part number is the hash partition of
    the key, so after renaming, the same input gives the same names and the same rows in each
    file. Hadoop's ``.crc`` side files (checksums of the old names) are removed.
    """
    for crc in out.glob(".*.crc"):
        crc.unlink()
    renamed = []
    for path in sorted(out.glob("part-*.parquet")):
        target = out / f"{path.name[:10]}.parquet"  # "part-00003"
        if target.exists() and target != path:
            raise RuntimeError(f"two Spark files for partition {path.name[:10]} in {out}")
        path.rename(target)
        renamed.append(target)
    return renamed


def parquet_rows(paths: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
