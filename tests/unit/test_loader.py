"""ShardLoader on real Parquet files: every row exactly once, deterministic, sharded, stoppable."""

from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from training.loader import ShardLoader, list_row_groups

COLUMNS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """3 files x 4 row groups of 250 rows; row i has a=i, b=2i, c=-i, label=i+0.5."""
    root: Path = tmp_path_factory.mktemp("ds")
    for k in range(3):
        i = np.arange(k * 1000, (k + 1) * 1000, dtype=np.float32)
        pq.write_table(pa.table({"a": i, "b": 2 * i, "c": (-i).astype(np.int32), "label": i + 0.5}),
                       root / f"part-{k:05d}.parquet", row_group_size=250)
    (root / "_common_metadata").write_bytes(b"not parquet data: skipped")
    return f"file://{root}"


def drain(loader: ShardLoader, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    xs, ys, sizes = [], [], []
    for x, y in loader.epoch(epoch):
        xs.append(x.numpy().copy())
        ys.append(y.numpy().copy())
        sizes.append(len(x))
    return np.concatenate(xs), np.concatenate(ys), sizes


def test_lists_row_groups_from_footers(dataset):
    _, groups = list_row_groups(dataset)
    assert len(groups) == 12 and sum(g.rows for g in groups) == 3000


@pytest.mark.parametrize("window", [1, 3])
def test_every_row_once_with_features_matching_labels(dataset, window):
    x, y, sizes = drain(ShardLoader(dataset, COLUMNS, "label", batch_size=128, shuffle_window=window, seed=1))
    assert sorted(y.tolist()) == [i + 0.5 for i in range(3000)]
    np.testing.assert_array_equal(x[:, 0] + 0.5, y)  # rows stay whole through the shuffle
    np.testing.assert_array_equal(x[:, 1], 2 * x[:, 0])
    np.testing.assert_array_equal(x[:, 2], -x[:, 0])
    assert sizes[:-1] == [128] * (len(sizes) - 1) and sum(sizes) == 3000


def test_same_seed_same_batches_other_epoch_other_order(dataset):
    first = drain(ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=7), epoch=0)[1]
    again = drain(ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=7, workers=1), epoch=0)[1]
    other = drain(ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=7), epoch=1)[1]
    np.testing.assert_array_equal(first, again)  # thread count does not change the stream
    assert not np.array_equal(first, other)
    # rows are shuffled, not just groups: a batch draws from several row groups (of 250 rows),
    # and not a run of neighbours from each
    batch = (first[:100] - 0.5).astype(int)
    assert len(set(batch // 250)) > 1 and (np.diff(np.sort(batch)) > 1).sum() > 50


def test_ranks_partition_the_dataset(dataset):
    loaders = [ShardLoader(dataset, COLUMNS, "label", rank=r, size=3, batch_size=64) for r in range(3)]
    seen = [drain(loader)[1] for loader in loaders]
    assert [len(s) for s in seen] == [loader.num_rows for loader in loaders] == [1000, 1000, 1000]
    assert sorted(np.concatenate(seen).tolist()) == [i + 0.5 for i in range(3000)]


def test_files_of_full_groups_and_a_tail_are_dealt_evenly(tmp_path):
    """8 files of one 10,000-row group and a ~5,000-row tail: dealt by position (groups[rank::2]),
    rank 0 got every full group, rank 1 every tail, and each epoch trained 68% of the rows."""
    from training.parquet_groups import deal

    for k in range(8):
        rows = 15000 + 17 * k
        pq.write_table(pa.table({"a": np.zeros(rows, np.float32), "label": np.zeros(rows, np.float32)}),
                       tmp_path / f"part-{k:05d}.parquet", row_group_size=10000)
    url = f"file://{tmp_path}"
    _, groups = list_row_groups(url)
    for size in (2, 3, 4):
        shards = [ShardLoader(url, ["a"], "label", rank=r, size=size, batch_size=64) for r in range(size)]
        rows = [s.num_rows for s in shards]
        assert sum(rows) == sum(g.rows for g in groups)
        assert max(rows) - min(rows) <= 10000, (size, rows)  # at most one group apart
        assert min(rows) * size >= 0.85 * sum(rows), (size, rows)
        assert {(g.path, g.index) for s in shards for g in s.groups} == {(g.path, g.index) for g in groups}
        for s in shards:  # each shard reads its files in path order
            assert s.groups == sorted(s.groups, key=lambda g: (g.path, g.index))
    assert deal(groups, 2) == deal(list(groups), 2)  # the same footers, the same deal on every rank


def test_the_label_as_a_feature_repeated_features_and_no_features_are_refused(dataset):
    """ShardLoader(url, ["a", "label"], "label") fed the target as an input (target leakage)."""
    for columns, said in ((["a", "label"], "not the label"), (["a", "a"], r"repeated: \['a'\]"), ([], "one or more")):
        with pytest.raises(ValueError, match=said):
            ShardLoader(dataset, columns, "label")


def test_storage_order_and_drop_last(dataset):
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=128, shuffle=False, drop_last=True)
    _, y, sizes = drain(loader)
    assert sizes == [128] * (3000 // 128) and loader.num_batches() == len(sizes)
    np.testing.assert_array_equal(y, np.arange(len(y), dtype=np.float32) + 0.5)


def test_closing_early_stops_the_threads(dataset):
    before = threading.active_count()
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=10, prefetch=1)
    batches = loader.epoch(0)
    next(batches)
    batches.close()
    assert threading.active_count() == before


@pytest.mark.parametrize("processes", [False, True])
def test_nulls_are_refused_with_the_column_named(tmp_path, processes):
    pq.write_table(pa.table({"a": pa.array([1.0, None], pa.float32()), "b": [1.0, 2.0], "c": [1, 2],
                             "label": [0.0, 1.0]}), tmp_path / "part-0.parquet")
    with ShardLoader(f"file://{tmp_path}", COLUMNS, "label", processes=processes) as loader:
        with pytest.raises(ValueError, match="column 'a' has 1 nulls"):  # raised in a worker process too
            drain(loader)


def test_bad_arguments_are_named(dataset, tmp_path):
    with pytest.raises(ValueError, match="rank=3 is outside 0..1"):
        ShardLoader(dataset, COLUMNS, "label", rank=3, size=2)
    with pytest.raises(FileNotFoundError, match="no .parquet files"):
        ShardLoader(f"file://{tmp_path}", COLUMNS, "label")
    for kwargs, message in [({"batch_size": 0}, "batch_size=0 must be an integer >= 1"),
                            ({"batch_size": "64"}, "batch_size='64' must be an integer >= 1"),
                            ({"workers": 0}, "workers=0 must be"), ({"shuffle_window": -1}, "shuffle_window=-1"),
                            ({"size": 0}, "size=0 must be an integer >= 1"),
                            ({"rank": 2, "size": 2}, r"rank=2 is outside 0..1 \(size=2\)")]:
        with pytest.raises(ValueError, match=message):
            ShardLoader(dataset, COLUMNS, "label", **kwargs)
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in the dataset at file://.*it has \['a', 'b', 'c', 'label'\]"):
        ShardLoader(dataset, ["a", "nope"], "label")
    with pytest.raises(ValueError, match=r"columns \['target'\] are not in the dataset"):
        ShardLoader(dataset, COLUMNS, "target")
    text = tmp_path / "text"
    text.mkdir()
    pq.write_table(pa.table({"a": [1.0], "city": ["oslo"], "label": [0.5]}), text / "part-0.parquet")
    with pytest.raises(ValueError, match="column 'city' is string: the loader reads integer and float columns only"):
        ShardLoader(f"file://{text}", ["a", "city"], "label")


def test_an_empty_split_gives_an_empty_shard(tmp_path):
    """Spark writes a file without row groups for an empty partition: the loader is built (the
    trainer then reports the empty split by name) instead of failing on the first row group."""
    pq.ParquetWriter(tmp_path / "part-00000.parquet", pa.schema([("a", pa.float32()), ("label", pa.float32())])).close()
    loader = ShardLoader(f"file://{tmp_path}", ["a"], "label", batch_size=4)
    assert (loader.total_row_groups, loader.num_rows, loader.num_batches()) == (0, 0, 0)
    assert list(loader.epoch(0)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs it)")
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("processes", [False, True])
def test_gpu_delivery_gives_the_cpu_batches(dataset, shuffle, processes):
    cpu = ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=3, shuffle=shuffle, shuffle_window=2)
    gpu = ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=3, shuffle=shuffle, shuffle_window=2,
                      device="cuda", processes=processes)
    n = 0
    for (xc, yc), (xg, yg) in zip(cpu.epoch(0), gpu.epoch(0), strict=True):
        assert xg.is_cuda and xg.is_contiguous() and xg.shape == xc.shape
        torch.testing.assert_close(xg.cpu(), xc.contiguous(), rtol=0, atol=0)
        torch.testing.assert_close(yg.cpu(), yc, rtol=0, atol=0)
        n += len(xg)
    assert n == 3000
    gpu.close()


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch, window, drop_last", [(100, 2, False), (130, 3, False), (700, 1, True)])
def test_the_gpu_paths_windows_give_the_cpu_batches_without_a_gpu(dataset, monkeypatch, shuffle, batch, window,
                                                                   drop_last):
    """``_window_gpu``'s reordering, run on CPU tensors: CUDA's stream context and events are
    stubbed here (no GPU on this machine); the copies, the shuffle's gather and the carried rows
    are the real code. On a GPU, test_gpu_delivery_gives_the_cpu_batches runs it whole."""
    class Event:
        def record(self, stream=None) -> None:
            pass

    import training.loader as loader_module

    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    kw = dict(batch_size=batch, seed=3, shuffle=shuffle, shuffle_window=window, drop_last=drop_last, rank=1, size=2)
    cpu, emulated = ShardLoader(dataset, COLUMNS, "label", **kw), ShardLoader(dataset, COLUMNS, "label", **kw)
    for epoch in (0, 1):
        rng = np.random.Generator(np.random.PCG64([3, epoch, 1]))  # as ShardLoader._produce makes it
        carry, got = None, []
        for blocks, last in emulated._decoded_windows(rng, threading.Event()):
            item, carry = emulated._window_gpu(blocks, carry, last, rng, None)
            if item is not None:
                x, y, _ = item
                got += [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        want = list(cpu.epoch(epoch))
        assert len(got) == len(want) > 0
        for (xg, yg), (xc, yc) in zip(got, want):
            assert xg.is_contiguous()
            torch.testing.assert_close(xg, xc.contiguous(), rtol=0, atol=0)
            torch.testing.assert_close(yg, yc, rtol=0, atol=0)
        if epoch == 0:  # the GPU path keeps its decoded blocks too: epoch 1 must not read a file
            assert set(emulated._cache) == set(emulated.groups)
            monkeypatch.setattr(loader_module, "column_chunks", _no_reads)


def _splitmix(s: int) -> int:
    s = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & (2 ** 64 - 1)
    s = ((s ^ (s >> 27)) * 0x94D049BB133111EB) & (2 ** 64 - 1)
    return s ^ (s >> 31)


def plain_shuffle(rng: np.random.Generator, values) -> list:
    """Fisher-Yates as training.scatter defines it, one Python step at a time: step k swaps
    item n-1-k with item (u * (n - k)) >> 32, u the 32-bit halves of the generator's raw words
    in turn (high half first), a u in Lemire's rejection zone redrawn through splitmix64."""
    values = list(values)
    n = len(values)
    words = rng.bit_generator.random_raw(n // 2).tolist()
    for k in range(n - 1):
        i = n - 1 - k
        u = words[k // 2] >> 32 if k % 2 == 0 else words[k // 2] & 0xFFFFFFFF
        m, t, s = u * (i + 1), (2 ** 32 - (i + 1)) % (i + 1), u
        while m & 0xFFFFFFFF < t:
            s = _splitmix((s + 0x9E3779B97F4A7C15) & (2 ** 64 - 1))
            m = (s >> 32) * (i + 1)
        values[i], values[m >> 32] = values[m >> 32], values[i]
    return values


def reference_stream(loader: ShardLoader, epoch: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """What ShardLoader must deliver, written the plain way: row groups in an order drawn from
    (seed, epoch, rank), windows of ``shuffle_window`` groups appended to the rows carried over
    from the previous window, each window's rows dealt to batches by the next draw (a shuffle
    of the batch labels) and kept in window order inside a batch (the order inside a batch
    changes no gradient), whole batches delivered, the rest carried. The GPU path implements
    exactly this on the device, so CPU and GPU agree."""
    names = loader.columns + [loader.label]
    rng = np.random.Generator(np.random.PCG64([loader.seed, epoch, loader.rank]))
    order = loader.groups
    if loader.shuffle:
        order = [loader.groups[i] for i in plain_shuffle(rng, range(len(order)))]
    carry = np.empty((len(names), 0), np.float32)
    xs, ys, sizes = [], [], []
    for i in range(0, len(order), loader.window):
        tables = [pq.ParquetFile(g.path).read_row_group(g.index, columns=names) for g in order[i:i + loader.window]]
        block = np.concatenate([carry] + [np.stack([t.column(c).to_numpy().astype(np.float32) for c in names])
                                          for t in tables], axis=1)
        n, last = block.shape[1], i + loader.window >= len(order)
        usable = n if last and not loader.drop_last else n - n % loader.batch_size
        rows = np.arange(n)
        if loader.shuffle:
            labels = plain_shuffle(rng, [r // loader.batch_size for r in range(n)])
            rows = np.argsort(labels, kind="stable")  # batch by batch, window order inside
        out, carry = block[:, rows[:usable]], block[:, rows[usable:]]
        for b in range(0, usable, loader.batch_size):
            xs.append(out[:-1, b:b + loader.batch_size].T)
            ys.append(out[-1, b:b + loader.batch_size])
            sizes.append(len(ys[-1]))
    return np.concatenate(xs), np.concatenate(ys), sizes


@pytest.mark.parametrize("shuffle, window, batch, drop_last, workers", [
    (True, 1, 100, False, 2), (True, 2, 128, False, 1), (True, 3, 700, False, 4),
    (True, 4, 1100, True, 3),  # batches larger than a window: rows carried across several windows
    (False, 2, 128, False, 2), (False, 1, 700, True, 1),
])
def test_the_stream_is_exactly_the_reference(dataset, shuffle, window, batch, drop_last, workers):
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=batch, seed=11, shuffle=shuffle,
                         shuffle_window=window, drop_last=drop_last, workers=workers, rank=1, size=2)
    assert_the_reference_stream(loader, (0, 1))


def assert_the_reference_stream(loader: ShardLoader, epochs) -> None:
    for epoch in epochs:
        x, y, sizes = drain(loader, epoch)
        rx, ry, rsizes = reference_stream(loader, epoch)
        assert sizes == rsizes
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(x, rx)


def test_the_stream_without_numba_is_the_reference_too(dataset, monkeypatch):
    """Where numba is not installed, training.scatter falls back to numpy: the same stream."""
    from training import scatter

    monkeypatch.setattr(scatter, "_place", scatter._place_numpy)
    monkeypatch.setattr(scatter, "_place_pair", None)
    monkeypatch.setattr(scatter, "_place_block", scatter._place_block_numpy)
    monkeypatch.setattr(scatter, "_positions", scatter._positions_numpy)
    monkeypatch.setattr(scatter, "_fisher_yates", scatter._fisher_yates_numpy)
    monkeypatch.setattr(scatter, "WHY_NOT_COMPILED", "No module named 'numba'")
    with pytest.warns(RuntimeWarning, match=r"numba is not importable \(No module named 'numba'\).*holding the GIL"):
        loader = ShardLoader(dataset, COLUMNS, "label", batch_size=128, seed=11, shuffle_window=2, workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in storage order nothing is drawn, so nothing to warn of
        ShardLoader(dataset, COLUMNS, "label", shuffle=False)
        monkeypatch.setattr(scatter, "WHY_NOT_COMPILED", "DLPIPE_NO_NUMBA=1")  # asked for: no warning either
        ShardLoader(dataset, COLUMNS, "label")
    x, y, sizes = drain(loader, 0)
    rx, ry, rsizes = reference_stream(loader, 0)
    assert sizes == rsizes
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)

@pytest.mark.parametrize("processes, memory_map", [(False, "1"), (True, "1"), (False, "0"), (True, "0")])
def test_columns_read_one_at_a_time_give_the_reference_stream(dataset, monkeypatch, processes, memory_map):
    """The test row groups are small enough to be read whole; here each read takes one column
    (1000 bytes: 250 rows of 4 bytes), so every column lands from its own chunk; from kept
    memory maps (the default) or read with pread. Worker processes inherit the settings."""
    monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", "1000")
    monkeypatch.setenv("DLPIPE_MEMORY_MAP", memory_map)
    with ShardLoader(dataset, COLUMNS, "label", batch_size=128, seed=11, shuffle_window=2, workers=2,
                     processes=processes) as loader:
        x, y, sizes = drain(loader, 0)
        rx, ry, rsizes = reference_stream(loader, 0)
    assert sizes == rsizes
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)


def test_a_row_group_decodes_to_a_column_major_block(dataset, monkeypatch):
    """The GPU path's host-side block (pinned there; plain here), read one column at a time."""
    monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", "1000")
    loader = ShardLoader(dataset, COLUMNS, "label")
    g = loader.groups[5]
    block = loader._decode(g).numpy()
    t = pq.ParquetFile(g.path).read_row_group(g.index)
    np.testing.assert_array_equal(block, np.stack([t.column(c).to_numpy() for c in COLUMNS + ["label"]]))


def test_a_bad_setting_is_refused_before_any_worker_starts(dataset, monkeypatch):
    monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", "lots")
    with pytest.raises(ValueError, match="DLPIPE_DECODE_CHUNK_BYTES='lots' must be a positive number of bytes"):
        ShardLoader(dataset, COLUMNS, "label", processes=True)
    monkeypatch.delenv("DLPIPE_DECODE_CHUNK_BYTES")
    monkeypatch.setenv("DLPIPE_MEMORY_MAP", "no")
    with pytest.raises(ValueError, match="DLPIPE_MEMORY_MAP='no' must be 1"):
        ShardLoader(dataset, COLUMNS, "label", processes=True)

# -- decoding in worker processes (processes=True) ---------------------------------------------

@pytest.mark.parametrize("shuffle, window, batch, drop_last, workers", [
    (True, 1, 100, False, 2), (True, 3, 700, False, 3), (True, 4, 1100, True, 2), (False, 2, 128, False, 2),
])
def test_worker_processes_deliver_the_reference_stream(dataset, shuffle, window, batch, drop_last, workers):
    with ShardLoader(dataset, COLUMNS, "label", batch_size=batch, seed=11, shuffle=shuffle, processes=True,
                     shuffle_window=window, drop_last=drop_last, workers=workers, rank=1, size=2) as loader:
        for epoch in (0, 1):  # the second epoch reuses the workers and their slots
            x, y, sizes = drain(loader, epoch)
            rx, ry, rsizes = reference_stream(loader, epoch)
            assert sizes == rsizes
            np.testing.assert_array_equal(y, ry)
            np.testing.assert_array_equal(x, rx)


def test_batches_kept_by_the_consumer_are_never_overwritten(dataset):
    """Batches are views of shared slots; a slot is reused only once no batch of it is alive, so a
    consumer that keeps a whole epoch of batches (without copying) still has the right rows."""
    with ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=2, shuffle_window=1, workers=2,
                     processes=True) as loader:
        kept = list(loader.epoch(0))
        grown = loader._ring.size
        rx, ry, _ = reference_stream(loader, 0)
        np.testing.assert_array_equal(torch.cat([y for _, y in kept]).numpy(), ry)
        np.testing.assert_array_equal(torch.cat([x for x, _ in kept]).numpy(), rx)
        del kept
        for _ in range(3):
            drain(loader, 1)
        assert loader._ring.size == grown  # freed slots are reused, not leaked
        assert grown >= 12  # one slot per window, since every window stayed referenced


def test_threads_reuse_window_buffers_only_once_no_batch_views_them(dataset, monkeypatch):
    """Thread mode reuses its window buffers too: a consumer keeping a whole epoch of batches
    still has the right rows, and one that keeps nothing gets by with a few buffers."""
    allocated: list[int] = []
    real_empty = np.empty

    def counting_empty(shape, dtype=float, *args, **kwargs):
        if isinstance(shape, int) and dtype is np.float32:
            allocated.append(shape)
        return real_empty(shape, dtype, *args, **kwargs)

    monkeypatch.setattr(np, "empty", counting_empty)
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=2, shuffle_window=1, workers=2)
    kept = list(loader.epoch(0))
    rx, ry, _ = reference_stream(loader, 0)
    np.testing.assert_array_equal(torch.cat([y for _, y in kept]).numpy(), ry)
    np.testing.assert_array_equal(torch.cat([x for x, _ in kept]).numpy(), rx)
    assert len(allocated) == 12  # every window stayed referenced: a buffer each
    del kept
    allocated.clear()
    for epoch in (1, 2):
        drain(loader, epoch)
    assert len(allocated) <= 4, allocated  # 24 more windows: the first epoch's buffers, reused


def test_worker_processes_stop_early_and_on_close(dataset):
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=10, prefetch=1, workers=2, processes=True)
    batches = loader.epoch(0)
    next(batches)
    batches.close()  # the epoch's queued decodes are waited out: the next epoch starts clean
    x, y, _ = drain(loader, 0)
    rx, ry, _ = reference_stream(loader, 0)
    np.testing.assert_array_equal(y, ry)
    procs = list(loader._pool._procs)
    assert all(p.poll() is None for p in procs)
    loader.close()
    assert all(p.poll() is not None for p in procs)


def test_closing_the_loader_under_a_running_epoch_says_so(dataset):
    """close() while an epoch still reads ends it with what happened, not with a worker blamed
    for exiting (or an IndexError from the emptied pool)."""
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=10, prefetch=1, workers=2, processes=True,
                         shuffle_window=1)  # 12 windows: most are still to decode after one batch
    batches = loader.epoch(0)
    next(batches)
    loader.close()
    with pytest.raises(RuntimeError, match=r"workers were closed \(ShardLoader.close\(\)\) while an epoch was "
                                           r"still reading") as raised:
        for _ in batches:
            pass
    assert "exited with code" not in str(raised.value)
    assert len(drain(loader, 1)[1]) == 3000  # the next epoch starts new workers
    loader.close()


def test_a_pool_closed_while_an_epoch_waits_on_it_says_so_every_time():
    """close() from one thread while another waits for an answer: the waiting thread looked its
    connection up again after close() had emptied the list, and got an IndexError."""
    import os
    import signal
    import threading

    from training.decode_pool import Decode, DecodePool

    for _ in range(3):
        pool = DecodePool(1, answer_timeout_s=30)
        slot = pool.new_slot(2, 10)
        os.kill(pool._procs[0].pid, signal.SIGSTOP)  # a worker busy with a long row group
        tickets = [pool.submit(Decode(slot.id, "file:///nowhere", None, ("a", "b"), 2, 10, start=0))
                   for _ in range(3)]
        raised: list[BaseException] = []

        def epoch() -> None:
            try:
                pool.wait(tickets)
            except BaseException as exc:  # noqa: BLE001 - what the epoch's thread would see
                raised.append(exc)

        waiting = threading.Thread(target=epoch)
        waiting.start()
        waiting.join(0.3)
        pool.close()
        waiting.join(40)
        assert not waiting.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
        assert "workers were closed" in str(raised[0])
        pool.close()  # a second close is harmless


def test_a_killed_worker_fails_the_epoch_naming_it(dataset):
    """A decoder killed (out of memory, say) fails the epoch with its pid, rather than hanging."""
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=100, workers=2, processes=True)
    drain(loader)
    victim = loader._pool._procs[1]
    victim.kill()
    victim.wait()
    with pytest.raises(RuntimeError, match=rf"worker 1 \(pid {victim.pid}\) exited with code -9"):
        drain(loader, 1)
    with pytest.raises(RuntimeError, match="close\\(\\) the loader to start new workers"):
        drain(loader, 2)
    loader.close()
    assert len(drain(loader, 3)[1]) == 3000  # new workers after close()
    loader.close()


def test_worker_processes_run_one_epoch_at_a_time(dataset, monkeypatch):
    monkeypatch.setattr(ShardLoader, "epoch_wait_s", 0.2)
    with ShardLoader(dataset, COLUMNS, "label", batch_size=10, workers=2, processes=True, shuffle_window=1,
                     prefetch=1) as loader:  # 12 windows: the first epoch is still decoding after one batch
        first = loader.epoch(0)
        next(first)
        with pytest.raises(RuntimeError, match="one epoch at a time: close the previous epoch's generator"):
            next(loader.epoch(1))
        first.close()
        assert len(drain(loader, 1)[1]) == 3000


def test_a_stopped_worker_fails_the_epoch_within_the_timeout(dataset, monkeypatch):
    """A decoder that stops answering (SIGSTOP, a hung read) fails the epoch after
    ``decode_timeout_s`` instead of hanging the training loop."""
    import os
    import signal
    import time

    monkeypatch.setattr(ShardLoader, "decode_timeout_s", 1.0)
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=100, workers=2, processes=True).start()
    victim = loader._pool._procs[0]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"worker 0 \(pid {victim.pid}\) stopped answering .*no answer in 1 s"):
            drain(loader)
        assert time.monotonic() - t < 10
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        loader.close()


def test_cancelled_decodes_are_answered_without_decoding(dataset):
    """After cancel(), queued tasks are answered at once (an early stop waits for nothing), and
    tasks submitted afterwards are decoded as usual."""
    import os
    import signal

    from training.decode_pool import Decode, DecodePool

    _, groups = list_row_groups(dataset)
    names = tuple(COLUMNS + ["label"])
    pool = DecodePool(1)
    try:
        slot = pool.new_slot(len(names), 250)
        os.kill(pool._procs[0].pid, signal.SIGSTOP)  # nothing it is sent can start before the cancel
        try:
            queued = [pool.submit(Decode(slot.id, dataset, groups[0], names, len(names), 250, start=0))
                      for _ in range(5)]
            pool.cancel()
        finally:
            os.kill(pool._procs[0].pid, signal.SIGCONT)
        pool.wait(queued)
        assert pool.skipped == 5
        assert not slot.window(250).any()  # none of them wrote anything
        pool.wait([pool.submit(Decode(slot.id, dataset, groups[5], names, len(names), 250, start=0))])
        assert pool.skipped == 5
        np.testing.assert_array_equal(slot.window(250)[-1], np.arange(1250, 1500, dtype=np.float32) + 0.5)
    finally:
        pool.close()


@pytest.mark.parametrize("setting, backend", [(None, "mimalloc"), ("system", "system")])
def test_decoding_workers_keep_their_memory_with_mimalloc(setting, backend):
    """A worker decodes with Arrow's mimalloc pool (jemalloc handed each row group's memory
    back to the kernel and faulted it in again), unless ARROW_DEFAULT_MEMORY_POOL says otherwise."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if setting:
        env["ARROW_DEFAULT_MEMORY_POOL"] = setting
    code = ("from training.decode_pool import _use_mimalloc; _use_mimalloc(); "
            "import pyarrow as pa; print(pa.default_memory_pool().backend_name)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == backend


@pytest.mark.parametrize("shuffle", [True, False])
def test_cached_row_groups_give_the_reference_stream_without_reading_the_files(dataset, monkeypatch, shuffle):
    import training.loader as loader_module

    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=130, seed=5, shuffle=shuffle, shuffle_window=3,
                         rank=0, size=2, cache_bytes=10 ** 9)
    drain(loader, 0)  # the first epoch decodes and keeps every row group
    assert set(loader._cache) == set(loader.groups)

    monkeypatch.setattr(loader_module, "column_chunks", _no_reads)
    assert_the_reference_stream(loader, (1, 2))
    uncached = ShardLoader(dataset, COLUMNS, "label", batch_size=130, seed=5, shuffle=shuffle, shuffle_window=3,
                           rank=0, size=2, cache_bytes=0)
    with pytest.raises(AssertionError, match="read again"):  # the check above can fail
        drain(uncached, 1)


def test_a_cache_too_small_for_the_shard_keeps_what_fits_and_decodes_the_rest(dataset):
    group_bytes = (len(COLUMNS) + 1) * 250 * 4
    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=100, seed=2, rank=0, size=1,
                         cache_bytes=5 * group_bytes + 10)
    assert_the_reference_stream(loader, (0, 1, 2))
    assert len(loader._cache) == 5 and loader._cache_reserved == 5 * group_bytes


def _no_reads(*args, **kwargs):
    raise AssertionError("a cached row group was read again")


def test_the_gpu_paths_default_cache_holds_the_shard_in_rounded_pinned_blocks(dataset):
    """torch's pinned-memory allocator rounds a block up to a power of two: the default budget
    on a GPU counts the blocks so, or part of the shard would be decoded every epoch."""
    loader = ShardLoader(dataset, COLUMNS, "label", device="cuda")  # nothing touches CUDA before an epoch
    block = (len(COLUMNS) + 1) * 250 * 4  # 4,000 bytes, kept in 4,096
    assert loader._cache_cost(loader.groups[0], pinned=True) == 4096
    assert loader.cache_bytes == 12 * 4096 > 12 * block


def test_the_cache_default_and_its_bad_values(dataset):
    from training.loader import auto_cache_bytes

    assert auto_cache_bytes(10 ** 6, ranks=8) == 10 ** 6  # a small shard: kept whole
    assert auto_cache_bytes(10 ** 15, ranks=1) == 0  # more than any memory: not kept at all
    assert ShardLoader(dataset, COLUMNS, "label").cache_bytes == 3000 * 4 * 4
    assert ShardLoader(dataset, COLUMNS, "label", processes=True).cache_bytes == 0  # workers decode every epoch
    for bad in (-1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match=r"cache_bytes=.* must be an integer >= 0"):
            ShardLoader(dataset, COLUMNS, "label", cache_bytes=bad)


def test_a_failed_decode_gives_its_room_in_the_cache_back(dataset, monkeypatch):
    import training.loader as loader_module

    real = loader_module.column_chunks

    def fails(*args, **kwargs):
        raise IOError("a truncated file")

    loader = ShardLoader(dataset, COLUMNS, "label", batch_size=100, workers=1, cache_bytes=10 ** 9)
    monkeypatch.setattr(loader_module, "column_chunks", fails)
    with pytest.raises(IOError, match="truncated"):
        drain(loader, 0)
    assert loader._cache_reserved == 0 and not loader._cache
    monkeypatch.setattr(loader_module, "column_chunks", real)
    drain(loader, 1)
    assert loader._cache_reserved == sum((len(COLUMNS) + 1) * g.rows * 4 for g in loader.groups)
