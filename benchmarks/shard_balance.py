"""Rows each epoch trains, with row groups dealt by position versus by rows, in one run.

    python -m benchmarks.shard_balance [--files 8] [--rows-per-file 15000] [--group-rows 10000]

Every rank takes the smallest shard's step count (an allreduce waits for all ranks), so the rows
a larger shard holds beyond it sit out each epoch. Spark writes each file as full row groups and
a smaller tail; dealt by position (``groups[rank::size]``, the baseline), ranks can get every
full group or every tail. ``training.parquet_groups.deal`` gives the largest group first to the
rank with the fewest rows. Only Parquet footers are read: no data is decoded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import machine, positive_int, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=positive_int, default=8, help="Parquet files in the split")
    ap.add_argument("--rows-per-file", type=positive_int, default=15000, help="rows in the first file (+17 a file)")
    ap.add_argument("--group-rows", type=positive_int, default=10000, help="Parquet row-group size")
    ap.add_argument("--batch-size", type=positive_int, default=256)
    args = ap.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.horovod_loop import epoch_coverage
    from training.parquet_groups import deal, list_row_groups

    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.files):
            rows = args.rows_per_file + 17 * k
            pq.write_table(pa.table({"a": np.zeros(rows, np.float32)}), Path(tmp) / f"part-{k:05d}.parquet",
                           row_group_size=args.group_rows)
        _, groups = list_row_groups(f"file://{tmp}")

    def per_epoch(shards: list[int]) -> tuple[int, str]:
        steps = min(-(-rows // args.batch_size) for rows in shards)
        used, _ = epoch_coverage(shards, steps, args.batch_size)
        return used, f"{used} ({used / sum(shards):.0%})"

    out = []
    for size in (2, 3, 4):
        by_position = [sum(g.rows for g in groups[r::size]) for r in range(size)]
        by_rows = [sum(g.rows for g in shard) for shard in deal(groups, size)]
        (old, old_text), (new, new_text) = per_epoch(by_position), per_epoch(by_rows)
        out.append({"ranks": size, "rows": sum(by_rows), "by position: shards": by_position,
                    "by position: rows an epoch": old_text, "dealt by rows: shards": by_rows,
                    "dealt by rows: rows an epoch": new_text, "ratio": f"{new / old:.2f}x"})
    print(f"{args.files} files of {args.rows_per_file}+ rows, {args.group_rows}-row groups, batch {args.batch_size}; "
          f"{machine()}\n")
    print(table(out, list(out[0])))


if __name__ == "__main__":
    main()
