"""The CPU shuffle's own cost: placing one window's decoded rows, and planning where they go.

    python -m benchmarks.placement [--window 4] [--batch 8192] [--threads N] [--repeats 15] [--loader-epochs 10]

One shuffle window (``--window`` row groups of the loader benchmark's dataset, 65 float32
columns) is decoded once; then each way of writing its rows into a window buffer is timed on
``--threads`` threads (one row group per task, as ShardLoader runs it), best of ``--repeats``:

- storage order: a plain copy per column, the floor (what evaluation reads);
- full permutation: every row to a random position of the window, positions ascending within a
  row group (ShardLoader before 2026-12-03, the baseline);
- batch membership: the same batches, rows in storage order inside each (``training.scatter``),
  one column per pass over the positions, then two columns per pass without and with the
  destination prefetched ahead (the last is what ShardLoader runs).

Here every row group is decoded up front, so the values come from memory. A last table times
decoding and placement together, as ShardLoader runs them: each row group read a few columns at
a time (``column_chunks``), each chunk placed while it is in the cache, and the window's plan
(drawing the permutation, then ``batch_positions``) as the producer thread makes it. The ways
run in interleaved rounds, one of each per round, so that a noisy neighbour slows them alike;
medians of wall time and of this process's CPU time. From those costs it prints the most of the
decoding-alone rate that a loader paying them can reach: the bound behind the loader
benchmark's "fraction of the ceiling".

The plans (where each row goes) are timed on one thread: the full permutation's
(``searchsorted`` + ``argsort``) and ``batch_positions``, compiled and numpy; then the whole
draw of a window, from the generator to the positions: a permutation plus ``batch_positions``
(ShardLoader before the batch labels were shuffled directly) against ``draw_positions``.

``--loader-epochs N`` (default 10; 0 skips it) then runs ShardLoader's shuffled epochs on the
whole dataset, threads, in N interleaved rounds with the window's draw made either way: what the
draw's cost is worth to the loader, where it shares the cores with decoding.

The dataset is the loader benchmark's, in the same default folder (``--data``): one of another
size there (``benchmarks.loader --rows 4000000``, say) is rewritten at 2M rows, and the loader
benchmark rewrites it back on its next run. Give each its own ``--data`` to keep both.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from benchmarks.common import machine, non_negative_int, positive_int, table
from benchmarks.loader import GROUP_ROWS, make_dataset
from training import scatter
from training.parquet_groups import column_chunks, list_row_groups, read_row_group


BASELINE = "full permutation (the baseline)"
PLAN_BASELINE = "full permutation: searchsorted + argsort (the baseline)"


@numba.njit(nogil=True)
def _full_permutation_place(dst, pos, src, values):  # the baseline's loop
    for i in range(pos.shape[0]):
        dst[pos[i]] = values[src[i]]


@numba.njit(nogil=True)
def _pair_without_prefetch(dst, dst2, at, values, values2):  # ShardLoader's loop before the prefetch
    for i in range(at.shape[0]):
        k = at[i]
        dst[k] = values[i]
        dst2[k] = values2[i]


def full_permutation_plan(perm: np.ndarray, starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row group: its positions in ascending order and the source row each takes."""
    seg = (np.searchsorted(starts, perm, side="right") - 1).astype(np.int16)
    pos = np.argsort(seg, kind="stable")
    src = (perm[pos] - starts[seg[pos]]).astype(np.int32)
    pos = pos.astype(np.int32)
    bounds = np.searchsorted(seg[pos], np.arange(len(starts)))
    return [(pos[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # compiles, faults the buffer in
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=positive_int, default=4, help="row groups in the window")
    ap.add_argument("--batch", type=positive_int, default=8192)
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--loader-epochs", type=non_negative_int, default=10,
                    help="rounds of ShardLoader epochs, each draw (0 skips)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DLPIPE_HOME", ".dlpipe")) / "bench" / "loader",
                    help="the loader benchmark's dataset folder, shared: rewritten at 2M rows when it holds "
                         "another size, refused when it holds files the benchmarks did not write")
    args = ap.parse_args()
    args.data = args.data.resolve()  # file:// URLs need an absolute path

    print(f"machine: {machine()}; numba {numba.__version__}", flush=True)
    columns = make_dataset(args.data, max(args.window * GROUP_ROWS, 2_000_000), 64) + ["label"]
    fs, groups = list_row_groups(f"file://{args.data}")
    groups = groups[:args.window]
    decoded = [[read_row_group(fs, g, columns).column(c).to_numpy() for c in columns] for g in groups]
    starts = np.cumsum([0] + [g.rows for g in groups])
    n, width = int(starts[-1]), len(columns)
    print(f"window: {len(groups)} row groups, {n:,} rows x {width} columns "
          f"({n * width * 4 / 2**20:.0f} MiB); batch {args.batch}; {args.threads} threads", flush=True)
    buf = np.empty((width, n), np.float32)
    perm = np.random.default_rng(0).permutation(n)
    full = full_permutation_plan(perm, starts)
    at = scatter.batch_positions(perm, args.batch)
    runs = [at[a:b] for a, b in zip(starts[:-1], starts[1:])]
    pool = ThreadPoolExecutor(args.threads)

    def each_group(place: Callable[[int], None]) -> Callable[[], None]:
        return lambda: list(pool.map(place, range(len(groups))))

    def one_column_per_pass(k: int) -> None:
        for j, values in enumerate(decoded[k]):
            scatter._place(buf[j], runs[k], values)

    def without_prefetch(k: int, first: int, values: list) -> None:
        """``place_columns`` for batch membership, two columns a pass by the loop before the
        prefetch (an odd last column by ShardLoader's own single-column loop)."""
        for j in range(0, len(values) - 1, 2):
            _pair_without_prefetch(buf[first + j], buf[first + j + 1], runs[k], values[j], values[j + 1])
        if len(values) % 2:
            scatter._place(buf[first + len(values) - 1], runs[k], values[-1])

    placements = {
        "storage order (plain copy, the floor)": each_group(
            lambda k: scatter.place_columns(buf, decoded[k], slice(int(starts[k]), int(starts[k + 1])))),
        BASELINE: each_group(
            lambda k: [_full_permutation_place(buf[j], *full[k], v) for j, v in enumerate(decoded[k])]),
        "batch membership, one column per pass": each_group(one_column_per_pass),
        "batch membership, two columns per pass, no prefetch": each_group(lambda k: without_prefetch(k, 0, decoded[k])),
        "batch membership, two columns per pass (ShardLoader)": each_group(
            lambda k: scatter.place_columns(buf, decoded[k], runs[k])),
    }
    ms = {name: best_ms(fn, args.repeats) for name, fn in placements.items()}
    rows = [{"placement": name, "ms per window": f"{t:.2f}", "ns per value": f"{1e6 * t / (n * width):.2f}",
             "vs full permutation": f"{ms[BASELINE] / t:.2f}x"} for name, t in ms.items()]
    print()
    print(table(rows, ["placement", "ms per window", "ns per value", "vs full permutation"]))

    plans = {
        PLAN_BASELINE: lambda: full_permutation_plan(perm, starts),
        "batch_positions, compiled (ShardLoader)": lambda: scatter.batch_positions(perm, args.batch),
        "batch_positions, numpy fallback": lambda: numpy_batch_positions(perm, args.batch),
    }
    ms = {name: best_ms(fn, args.repeats) for name, fn in plans.items()}
    rows = [{"plan, one thread": name, "ms per window": f"{t:.2f}", "vs full permutation": f"{ms[PLAN_BASELINE] / t:.2f}x"}
            for name, t in ms.items()]
    draw = best_ms(lambda: np.random.default_rng(1).permutation(n), args.repeats)  # a part of both, not a plan
    rows.append({"plan, one thread": "drawing the permutation itself (before either plan)",
                 "ms per window": f"{draw:.2f}", "vs full permutation": "-"})
    print()
    print(table(rows, ["plan, one thread", "ms per window", "vs full permutation"]))

    draws = {
        DRAW_BASELINE: lambda: scatter.batch_positions(np.random.default_rng(1).permutation(n), args.batch),
        "draw_positions: the batch labels shuffled (ShardLoader)": lambda: scatter.draw_positions(
            np.random.default_rng(1), n, args.batch),
        "draw_positions, numpy fallback": lambda: numpy_draw_positions(np.random.default_rng(1), n, args.batch),
    }
    ms = {name: best_ms(fn, args.repeats) for name, fn in draws.items()}
    rows = [{"window's draw, one thread": name, "ms per window": f"{t:.2f}",
             "vs permutation": f"{ms[DRAW_BASELINE] / t:.2f}x"} for name, t in ms.items()]
    print()
    print(table(rows, ["window's draw, one thread", "ms per window", "vs permutation"]))

    # In place, as ShardLoader runs it: each task decodes its row group a few columns at a time
    # and places each chunk while it is in the cache; decoding alone is the floor here.
    def decoding(place: Callable[[int, int, list], None] | None) -> Callable[[], None]:
        def task(k: int) -> None:
            for first, values in column_chunks(fs, groups[k], columns):
                if place is not None:
                    place(k, first, values)
        return each_group(task)

    in_place = {
        "decoding alone (the floor)": decoding(None),
        "+ storage order (plain copy)": decoding(
            lambda k, first, v: scatter.place_columns(buf[first:first + len(v)], v, slice(int(starts[k]), int(starts[k + 1])))),
        "+ batch membership, no prefetch": decoding(without_prefetch),
        "+ batch membership (ShardLoader)": decoding(
            lambda k, first, v: scatter.place_columns(buf[first:first + len(v)], v, runs[k])),
        PLAN: lambda: scatter.draw_positions(np.random.default_rng(7), n, args.batch),
    }
    timings = interleaved_ms(in_place, args.repeats)
    floor = timings["decoding alone (the floor)"][0]

    def over_decoding(name: str, cpu: float) -> str:  # the plan runs without decoding: all of it is extra
        return "-" if name.startswith("decoding") else f"{cpu:.1f}" if name == PLAN else f"{cpu - floor:.1f}"

    rows = [{"decode and place, in place": name, "wall ms (median)": f"{wall:.1f}", "CPU ms (median)": f"{cpu:.1f}",
             "CPU over decoding": over_decoding(name, cpu)} for name, (cpu, wall) in timings.items()]
    print()
    print(table(rows, ["decode and place, in place", "wall ms (median)", "CPU ms (median)", "CPU over decoding"]))
    copy = timings["+ storage order (plain copy)"][0]
    shuffled = timings["+ batch membership (ShardLoader)"][0] + timings[PLAN][0]
    print(f"\nThe most of decoding's rate that a loader paying these costs can reach, with all cores busy:"
          f"\n  storage order {floor / copy:.2f} (decoding + copy), shuffled {floor / shuffled:.2f} "
          f"(decoding + placement + plan); the loader's target is 0.8 (docs/benchmarks.md)")
    if args.loader_epochs:
        print()
        loader_epochs(args.data, columns[:-1], args.batch, args.threads, args.loader_epochs)


PLAN = "the window's plan: draw_positions (one thread)"
DRAW_BASELINE = "rng.permutation + batch_positions (the baseline)"


def loader_epochs(data: Path, features: list[str], batch: int, threads: int, rounds: int) -> None:
    """ShardLoader's shuffled epochs (thread workers) in ``rounds`` interleaved rounds, the
    window's draw made by the baseline or by ``draw_positions``. The draw is swapped by
    rebinding the name ``training.loader`` calls, so the loader is otherwise the same object,
    buffers and maps included; the producer thread's CPU time in each draw is measured too."""
    import training.loader as loader_module
    from benchmarks.loader import ours, timed

    spent: dict[str, list[float]] = {}

    def measured(name: str, draw: Callable[[np.random.Generator, int, int], np.ndarray]):
        spent[name] = []

        def run(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
            c = time.thread_time()
            at = draw(rng, n, b)
            spent[name].append(time.thread_time() - c)
            return at
        return run

    draws = {name: measured(name, draw) for name, draw in {
        DRAW_BASELINE: lambda rng, n, b: scatter.batch_positions(rng.permutation(n), b),
        "draw_positions (ShardLoader)": scatter.draw_positions,
    }.items()}
    epochs = ours(data, features, batch, threads)
    rows = epochs.loader.num_rows
    wall: dict[str, list[float]] = {name: [] for name in draws}
    cpu: dict[str, list[float]] = {name: [] for name in draws}
    try:
        for round_ in range(rounds + 1):  # round 0 warms up (compiles, maps the files, makes buffers)
            for name, draw in draws.items():
                loader_module.draw_positions = draw
                c = time.process_time()
                seconds = timed(name, epochs, rows)["seconds"]
                if round_:
                    wall[name].append(seconds)
                    cpu[name].append(time.process_time() - c)
    finally:
        loader_module.draw_positions = scatter.draw_positions
    base = DRAW_BASELINE
    out = [{f"ShardLoader, {threads} threads, shuffled": name, "wall s (median)": f"{np.median(wall[name]):.3f}",
            "CPU s (median)": f"{np.median(cpu[name]):.3f}",
            "vs baseline, wall": f"{np.median(np.divide(wall[base], wall[name])):.2f}x",
            "vs baseline, CPU": f"{np.median(np.divide(cpu[base], cpu[name])):.2f}x",
            "draw CPU ms (median)": f"{1e3 * np.median(spent[name]):.2f}"} for name in draws]
    print(f"ShardLoader epochs of {rows:,} rows, {rounds} interleaved rounds; ratios are medians of "
          f"each round's pair", flush=True)
    print(table(out, list(out[0])))


def numpy_batch_positions(perm: np.ndarray, batch: int) -> np.ndarray:
    """``batch_positions`` as it runs without numba."""
    labels = np.empty(len(perm), scatter._label_dtype(len(perm), batch))
    scatter._labels_numpy(perm, batch, labels)
    return scatter._positions_numpy(labels, batch)


def numpy_draw_positions(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """``draw_positions`` as it runs without numba."""
    labels = scatter._batch_labels(n, batch)
    scatter._fisher_yates_numpy(labels, scatter._raw_words(rng, n))
    return scatter._positions_numpy(labels, batch)


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Per name, the median CPU time of this process (all threads) and the median wall time of
    its function, in ms, over ``repeats`` rounds that each run every function once: on a
    machine whose speed drifts, every way sees the same drift."""
    for fn in fns.values():
        fn()  # compiles, faults the buffer in
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c, t = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {name: (1e3 * float(np.median(cpu[name])), 1e3 * float(np.median(wall[name]))) for name in fns}


if __name__ == "__main__":
    main()
