"""Committing a team's own raw data: Parquet files its ingestion wrote, as one raw day partition.

The feature stage reads only *committed* raw partitions (``raw/<name>/dt=<day>/manifests/``),
never files that merely sit in a folder: a half-copied day must not be read as a whole one.
``commit_raw_files`` copies the files into an attempt and commits them the way every stage
commits, with their SHA-256 in the manifest. The fingerprint is the files' contents: the same
bytes as the day's newest version are skipped; other bytes commit a new version, which readers
take from then on (a day landed again after a correction, or back to what it was before a bad
one). ``dlpipe ingest-raw`` is its command line.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import date
from pathlib import Path

from dlpipe.commit import StageKey, StageResult, run_newest_version
from dlpipe.errors import ConfigError, IntegrityError
from dlpipe.hashing import sha256_file
from dlpipe.interval import day_partition
from dlpipe.runctx import RunContext

# what identifies the code of an ingested raw day (see commit_raw_files)
RAW_FORMAT = "dlpipe-raw-ingest-v1"

# the names a feature job's ``features.raw`` accepts
RAW_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


def parquet_files(paths: list[Path]) -> tuple[list[Path], int]:
    """The Parquet files named, a directory standing for the ``*.parquet`` files in it, and their
    rows, from one read of each footer; each must open as Parquet, and all must share one schema
    (the feature job reads them as one table)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.glob("*.parquet") if p.is_file() or p.is_symlink())
            if not inside:
                raise ConfigError("PATH", str(path), "the directory holds no *.parquet file; name the files")
            files += inside
        elif path.is_file() or path.is_symlink():
            files.append(path)
        else:
            raise ConfigError("PATH", str(path), "no such file or directory")
    for f in files:
        if f.is_symlink():  # a link planted in a landing folder would copy any file this account can read
            raise ConfigError("PATH", str(f), f"a symbolic link (to {os.readlink(f)}): name the file itself, so "
                                              f"that the manifest records where the bytes came from")
    if not files:
        raise ConfigError("PATH", "", "name at least one Parquet file or a directory of them")
    seen: dict[Path, Path] = {}
    for f in files:  # a folder and a file in it, or a file twice: its rows would count twice
        if (real := f.resolve()) in seen:
            raise ConfigError("PATH", str(f), f"the same file as {seen[real]}, named twice: each file once")
        seen[real] = f
    files = sorted(files, key=lambda f: str(f.resolve()))  # the same files in any order: the same version
    return files, footer_rows(files, files)


def footer_rows(files: list[Path], shown: list[Path]) -> int:
    """The rows of ``files`` from their footers, which must open as Parquet and share one schema;
    errors name ``shown`` (the file each was copied from)."""
    import pyarrow.parquet as pq

    schema, rows = None, 0
    for f, name in zip(files, shown):
        try:
            meta = pq.read_metadata(f)
            this = meta.schema.to_arrow_schema()
        except Exception as exc:  # pyarrow's ArrowInvalid for a file that is not Parquet, or torn
            raise ConfigError("PATH", str(name), f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        if schema is None:
            schema, first = this, name
        elif not this.equals(schema):
            raise ConfigError("PATH", str(name), f"its schema differs from {first.name}'s: {this} against {schema}; "
                                                 f"commit one day's files with one schema")
        rows += meta.num_rows
    return rows


def commit_raw_files(name: str, day: date, paths: list[Path], run: RunContext,
                     home: Path | None = None) -> StageResult:
    """Commit ``paths`` (Parquet files, or directories of them) as raw partition ``name``/dt=``day``.

    Skipped when the day's newest version holds the same bytes in the same order; otherwise a
    new version is committed, which readers take from then on (also bytes an older version held:
    going back after a bad correction)."""
    if not isinstance(name, str) or not RAW_NAME.fullmatch(name):  # match() and $ take a trailing newline
        raise ConfigError("NAME", name, "lowercase letters, digits, '_' and '-', starting with a letter or digit "
                                        "(the name a pipeline's features.raw gives)")
    files, rows = parquet_files(paths)
    names = [f"part-{k:05d}.parquet" for k in range(len(files))]
    config = {"day": day.isoformat(), "files": {n: sha256_file(f) for n, f in zip(names, files)}}
    hashes = list(config["files"].values())
    if len(set(hashes)) < len(hashes):
        twins = [str(f) for f, h in zip(files, hashes) if hashes.count(h) > 1]
        raise ConfigError("PATH", ", ".join(twins), "these files hold the same bytes: their rows would count "
                                                    "twice; commit each file once")
    if rows == 0:
        raise ConfigError("PATH", ", ".join(str(f) for f in files),
                          "the files hold no rows, and the feature stage refuses an empty day; commit the "
                          "day once its events have landed")

    def changed(f: Path) -> IntegrityError:
        return IntegrityError(f"{f} changed while it was being committed (its SHA-256 or its rows are not the "
                              f"ones checked a moment before): nothing was committed; run again once the file "
                              f"is complete")

    def produce(attempt: Path) -> dict:
        for n, f in zip(names, files):
            shutil.copyfile(f, attempt / n)
            if sha256_file(attempt / n) != config["files"][n]:  # rewritten since it was hashed
                raise changed(f)
        # The footers read above may be of other bytes than the ones hashed (a file replaced in
        # between): the copies, now known to be the hashed bytes, are what the rows and the one
        # schema are taken from.
        if footer_rows([attempt / n for n in names], files) != rows:
            raise changed(", ".join(str(f) for f in files))
        return {"rows": rows, "day": day.isoformat(), "sources": [str(f) for f in files]}

    # The copy is the whole of this stage's work: a fixed format version, not this file's hash,
    # so that a dlpipe upgrade does not make the same bytes a new version (and recompute every
    # feature and dataset downstream). Bump it only if the committed layout changes.
    return run_newest_version(StageKey("raw", name, day_partition(day)), config=config,
                              code={"sources_hash": RAW_FORMAT}, run=run, produce=produce, home=home)


def uncommitted_files(name: str, day: date) -> list[Path]:
    """Parquet files written straight into a raw day's folder, which readers never take: what
    a team's ingestion leaves when it writes files but does not commit them."""
    folder = StageKey("raw", name, day_partition(day)).dir()
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []
