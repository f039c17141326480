"""Rank-sharded, deterministic, prefetching batches from a committed Parquet/Petastorm dataset.

Petastorm's reader turns every row group into Python row objects or per-column lists before a
batch is built, and its BatchedDataLoader then re-buffers them; on a GPU that starves the model
(docs/benchmarks.md). This loader keeps the data columnar from the Parquet page to the tensor:

- the unit of work is a Parquet row group, listed once from the file footers (no data read) and
  dealt to ranks evenly by rows (``parquet_groups.deal``), so every rank knows its row count before it reads anything;
- worker threads decode row groups ahead of the consumer (pyarrow releases the GIL while it
  decompresses), and results are taken in a fixed order, so the stream is deterministic. With
  ``processes=True`` the workers are processes writing into shared memory
  (``training.decode_pool``), so they never wait for, or hold up, the training loop's GIL;
- each window of ``shuffle_window`` row groups is shuffled by a permutation drawn from (seed,
  epoch, rank): it decides which rows make up each batch, and inside a batch rows keep their
  storage order (``training.scatter``: the same batches as a full permutation, written in
  sequential runs instead of random places). On the CPU, the worker that decodes a row group
  writes its rows straight to their places in the window's buffer, so the shuffle adds no pass
  over the data;
- on a GPU, pinned blocks go to the device on the loader's own CUDA stream and the same
  reordering runs there, so decoding, the host-to-device copy and the model's compute all
  overlap. Either way batches are views of one window, and both deliver the same batches;
- with threads, decoded row groups are kept (``cache_bytes``) where the shard fits in memory:
  training makes several epochs over the same rows, and decoding is most of an epoch's CPU
  time, so later epochs only place rows. The batches do not change.

Petastorm datasets are Parquet files plus metadata, so this reads them directly; only scalar
numeric columns are supported (images go through Petastorm's codecs, see feature_jobs/digits.py).
"""

from __future__ import annotations

import collections
import numbers
import queue
import threading
import time
import warnings
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from training.decode_pool import Decode, DecodePool, Slot, SlotRing
from training import scatter
from training.scatter import draw_positions, permutation, place_block, place_columns, window_order
from training.parquet_groups import (RowGroup, check_numeric_columns, column_chunks, deal, decode_chunk_bytes,
                                     list_row_groups, memory_map_enabled)


class ShardLoader:
    """``(features [b, f] float32, label [b] float32)`` batches of one rank's shard.

    On the CPU, ``features`` is a transposed view of the window's column-major buffer (strides
    ``(1, window rows)``): ``nn.Linear`` and matmul take it as it is, with no copy; call
    ``.contiguous()`` before ``.view()`` or anything else that needs row-major memory. On a
    GPU, batches are contiguous. A batch's memory is reused once no tensor refers to it.

    :param url: a split of a dataset: ``file://...``, or ``s3://bucket/prefix`` with credentials
        from the AWS chain (environment, profile, instance role) and, for another S3-compatible
        server, ``?endpoint_override=host:port&scheme=http`` (pyarrow's S3 URL options)
    :param columns: feature columns, in model input order; ``label``: the target column
    :param rank, size: this process's shard of ``size``; row group ``i`` belongs to rank ``i % size``
    :param batch_size: rows per batch; the last batch of an epoch is smaller unless ``drop_last``
    :param seed: with the epoch and rank, fixes the row-group order and the row permutation
    :param shuffle: ``False`` reads in storage order (evaluation). Shuffled, each batch is a
        random draw from its window, but its rows come in storage order: split a batch into
        micro-batches only after permuting it
    :param shuffle_window: row groups mixed together by one permutation
    :param workers: decoding threads; ``prefetch``: windows ready ahead of the consumer
    :param processes: make the ``workers`` processes instead of threads (``training.decode_pool``):
        they decode into shared memory and leave this process's GIL to the training loop. Same
        batches either way. Call ``close()`` (or use ``with``) to stop them; they also stop with
        this process.
    :param device: where batches are delivered; a CUDA device gets pinned, asynchronous copies
    :param cache_bytes: with threads, keep decoded row groups in memory, up to this many bytes,
        so that later epochs place them without reading or decoding them again (the same
        batches). None: the whole shard if it takes at most a quarter of the memory available
        now, shared by ``size`` ranks (``auto_cache_bytes``); 0: no cache. Process workers
        decode every epoch.
    """

    epoch_wait_s = 5.0  # process mode: how long a new epoch waits for the previous one to close
    decode_timeout_s = 600.0  # process mode: a worker silent this long (stopped, stuck) fails the epoch

    def __init__(self, url: str, columns: list[str], label: str, *, rank: int = 0, size: int = 1,
                 batch_size: int = 1024, seed: int = 0, shuffle: bool = True, shuffle_window: int = 4,
                 workers: int = 4, prefetch: int = 2, drop_last: bool = False, processes: bool = False,
                 device: torch.device | str | None = None, cache_bytes: int | None = None) -> None:
        for name, value in (("size", size), ("batch_size", batch_size), ("shuffle_window", shuffle_window),
                            ("workers", workers), ("prefetch", prefetch)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or not 0 <= rank < size:
            raise ValueError(f"rank={rank!r} is outside 0..{size - 1} (size={size})")
        decode_chunk_bytes(), memory_map_enabled()  # a bad DLPIPE_* setting fails here, not in a worker
        if shuffle and scatter.WHY_NOT_COMPILED and scatter.WHY_NOT_COMPILED != "DLPIPE_NO_NUMBA=1":
            warnings.warn(f"numba is not importable ({scatter.WHY_NOT_COMPILED}): the shuffle runs numpy's versions, "
                          "whose draw takes 50-60 ms a 250,000-row window in Python, holding the GIL. "
                          "Install numba (part of dlpipe's dependencies) for the compiled loops.",
                          RuntimeWarning, stacklevel=2)
        columns = list(columns)
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if not columns or repeated or label in columns:  # the label as an input leaks the target
            raise ValueError(f"columns={columns!r}, label={label!r}: give one or more feature columns, each once, "
                             f"and not the label" + (f" (repeated: {repeated})" if repeated else ""))
        self.url, self.columns, self.label = url, columns, label
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.window, self.workers, self.prefetch = rank, shuffle_window, workers, prefetch
        self.device = torch.device(device or "cpu")
        self.fs, groups = list_row_groups(url)
        if groups:  # files without row groups (an empty split) have nothing to check or read
            check_numeric_columns(self.fs, groups[0], url, [*self.columns, label])
        self.total_row_groups = len(groups)
        self.groups = deal(groups, size)[rank]
        self.num_rows = sum(g.rows for g in self.groups)
        self.wait_s = 0.0  # time the consumer spent blocked on data, summed over epochs
        self.processes = processes
        self._pool: DecodePool | None = None  # started by the first epoch in process mode
        self._ring: SlotRing | None = None
        self._pinned: list[tuple[int, np.ndarray]] = []  # (address, view) of slots registered with CUDA
        self._close = lambda: None
        self._one_epoch = threading.Lock()
        # thread mode, CPU: window buffers, reused across windows and epochs (at most as many
        # kept as one epoch has in flight: decoding ahead, delivering, carried, queued). The
        # factory holds the size, not the loader: see _decoders
        values = (len(self.columns) + 1) * self._window_rows
        self._buffers: SlotRing[np.ndarray] = SlotRing(lambda: np.empty(values, np.float32), keep=prefetch + 3)
        if cache_bytes is not None and (isinstance(cache_bytes, bool) or not isinstance(cache_bytes, numbers.Integral)
                                        or cache_bytes < 0):
            raise ValueError(f"cache_bytes={cache_bytes!r} must be an integer >= 0 (0: no cache) or None (auto)")
        pinned = self.device.type == "cuda"  # the GPU path keeps its pinned blocks, rounded up
        shard_bytes = sum(self._cache_cost(g, pinned) for g in self.groups)
        self.cache_bytes = 0 if processes else (
            auto_cache_bytes(shard_bytes, size) if cache_bytes is None else int(cache_bytes))
        self._cache: dict[RowGroup, torch.Tensor] = {}  # row group -> its decoded [f + 1, rows] block
        self._cache_reserved = 0
        self._cache_lock = threading.Lock()

    def start(self) -> ShardLoader:
        """Start the decoding processes now rather than with the first epoch (no-op for threads)."""
        if self.processes:
            self._decoders()
        return self

    def close(self) -> None:
        """Stop the decoding processes, if any (the next epoch starts them again)."""
        self._close()
        self._pool = self._ring = None

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _window_rows(self) -> int:
        """The most rows a window can hold: its row groups plus fewer than a batch carried in.
        At least 1: a shard of empty row groups (batch_size 1) still plans empty windows, and a
        shared slot of 0 bytes cannot be mapped."""
        return max(1, self.batch_size - 1 + sum(sorted(g.rows for g in self.groups)[-self.window:]))

    def num_batches(self) -> int:
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch. Close the generator to stop early (it stops its threads)."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(epoch, q, stop), daemon=True,
                                    name=f"loader-rank{self.rank}")
        producer.start()
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            while True:
                t = time.perf_counter()
                item = q.get()
                self.wait_s += time.perf_counter() - t
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y, ready = item
                if ready is not None:  # the copy ran on the loader's stream: order it before use
                    stream.wait_event(ready)
                    x.record_stream(stream)
                    y.record_stream(stream)
                for i in range(0, len(x), self.batch_size):
                    yield x[i:i + self.batch_size], y[i:i + self.batch_size]
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    producer.join(0.05)

    # -- producer side -------------------------------------------------------------------------

    def _produce(self, epoch: int, q: queue.Queue, stop: threading.Event) -> None:
        if self.device.type == "cuda":  # a new thread's current device is 0: on local rank 3 its
            torch.cuda.set_device(self.device)  # pinning and copies would open a context on GPU 0
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            # PCG64 by name, not default_rng: numpy may change the default generator, not this one's stream
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, self.rank]))
            if self.device.type == "cuda":
                copy_stream = torch.cuda.Stream(self.device)
                carry = None  # rows of the previous window not yet delivered (column-major)
                windows = (self._decoded_windows_procs(rng, stop, copy_stream) if self.processes
                           else self._decoded_windows(rng, stop))
                for blocks, last in windows:
                    item, carry = self._window_gpu(blocks, carry, last, rng, copy_stream)
                    if item is not None and not put(item):
                        return
            else:
                windows = self._windows_procs(rng, stop) if self.processes else self._windows_cpu(rng, stop)
                for item in windows:
                    if not put(item):
                        return
            put(None)
        except BaseException as exc:  # handed to the consumer, which raises it in the training loop
            put(exc)

    def _order(self, rng: np.random.Generator) -> list[RowGroup]:
        """The epoch's row-group order: the first draw from the epoch's generator."""
        return [self.groups[i] for i in permutation(rng, len(self.groups))] if self.shuffle else self.groups

    def _plan(self, rng: np.random.Generator) -> Iterator[_Window]:
        """The windows of an epoch, drawn lazily in order: the same draws as the GPU path makes.

        Window ``w`` holds the ``c`` rows carried over from window ``w - 1`` (its source rows
        ``0..c-1``) and then its row groups' rows. Its draw puts each source row in a batch, at a
        position there (``training.scatter.draw_positions``).
        Positions below ``usable`` are delivered, the rest are the next carry. Only row counts
        are needed, so a window is planned before any of it is decoded.
        """
        order = self._order(rng)
        carried = 0
        for i in range(0, len(order), self.window):
            groups, last = order[i:i + self.window], i + self.window >= len(order)
            sizes = [carried] + [g.rows for g in groups]  # segment 0: the carried rows
            starts = [int(a) for a in np.cumsum([0] + sizes)]
            n = starts[-1]
            at = draw_positions(rng, n, self.batch_size) if self.shuffle else None
            usable = self._usable(n, last)
            yield _Window(groups, carried, usable, last, starts, at)
            carried = 0 if last else n - usable

    def _windows_cpu(self, rng: np.random.Generator, stop: threading.Event) -> Iterator[tuple]:
        """Deliverable items on the CPU. Each worker thread decodes a row group straight into its
        shuffled positions in the window's buffer (per column, one contiguous run per batch), so
        the shuffle costs no pass over the data of its own. The next window
        is decoding while this one is delivered. ``x`` is a transposed view of the column-major
        buffer (matmul takes it as it is).

        Window buffers are reused once no delivered batch views them any more: a fresh 60 MB
        buffer per window costs its page faults every time, which on a VM can be as slow as the
        decoding itself (docs/benchmarks.md)."""
        f = len(self.columns)
        plan = self._plan(rng)
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"decode-rank{self.rank}") as pool:
            pending: collections.deque = collections.deque()

            def submit() -> None:
                w = next(plan, None)
                if w is None:
                    return
                flat = self._buffers.acquire()
                buf = flat[:(f + 1) * w.n].reshape(f + 1, w.n)
                futures = [pool.submit(self._decode_into, g, buf, at) for g, at in zip(w.groups, w.places[1:])]
                pending.append((w, flat, buf, futures))

            submit()
            carry, prev = None, None
            try:
                while pending and not stop.is_set():
                    submit()  # keep one window decoding ahead
                    w, flat, buf, futures = pending.popleft()
                    if w.carried:
                        place_block(buf, carry, w.places[0])
                    for fut in futures:
                        fut.result()
                    if prev is not None:  # its carried rows are in this window now
                        self._buffers.retire(*prev)
                    carry = None if w.last else buf[:, w.usable:]
                    delivered = buf[:, :w.usable]  # torch's storage holds this very array
                    prev = (flat, _alive(delivered))
                    if w.usable:
                        t = torch.from_numpy(delivered)
                        yield t[:f].T, t[f], None
                        del t
                    del buf, delivered
            finally:
                for _, _, _, futures in pending:
                    for fut in futures:
                        fut.cancel()
                if prev is not None:
                    self._buffers.retire(*prev)

    # -- decoding in worker processes (processes=True) -------------------------------------------

    def _decoders(self) -> tuple[DecodePool, SlotRing]:
        """The worker processes and their slots, started on first use and kept across epochs."""
        if self._pool is None:
            pool = DecodePool(self.workers, label=f"decode-rank{self.rank}", answer_timeout_s=self.decode_timeout_s)
            self._close = weakref.finalize(self, _stop_decoders, pool, self._pinned)
            # The slot factory holds what it needs, not the loader: a loader in a reference
            # cycle (loader -> ring -> factory -> loader) kept its processes and shared memory
            # until a cyclic collection, which for old objects may never come in a long run.
            width, rows, pinned = len(self.columns) + 1, self._window_rows, self._pinned
            pin = self.device.type == "cuda"

            def new_slot() -> Slot:
                slot = pool.new_slot(width, rows)
                if pin:
                    _pin(slot, pinned)
                return slot

            self._ring = SlotRing(new_slot)
            self._pool = pool
        if self._pool.broken:
            raise RuntimeError(f"{self._pool.broken}; close() the loader to start new workers")
        return self._pool, self._ring

    def _claim_decoders(self) -> tuple[DecodePool, SlotRing]:
        """The decoders for one epoch: they answer tasks in order, so two epochs cannot share them."""
        decoders = self._decoders()
        if not self._one_epoch.acquire(timeout=self.epoch_wait_s):  # the previous epoch may still be closing
            raise RuntimeError("a ShardLoader with processes=True runs one epoch at a time: close the previous "
                               "epoch's generator (contextlib.closing) before starting the next")
        return decoders

    def _windows_procs(self, rng: np.random.Generator, stop: threading.Event) -> Iterator[tuple]:
        """``_windows_cpu`` with the decoding in worker processes. The plan (and so the stream) is
        the same; its index goes into the window's slot, where each worker reads the places of
        its row group. This process only places the carried rows, once per window."""
        pool, ring = self._claim_decoders()  # released in the finally below
        f, names = len(self.columns), tuple(self.columns + [self.label])
        plan = self._plan(rng)
        pending: collections.deque = collections.deque()

        def submit() -> None:
            w = next(plan, None)
            if w is None:
                return
            slot = ring.acquire()
            if w.at is not None:
                slot.index()[:w.n] = w.at
                tasks = [Decode(slot.id, self.url, g, names, f + 1, w.n, a=a, b=b)
                         for g, a, b in zip(w.groups, w.starts[1:], w.starts[2:])]
            else:
                tasks = [Decode(slot.id, self.url, g, names, f + 1, w.n, start=a)
                         for g, a in zip(w.groups, w.starts[1:])]
            pending.append((w, slot, [pool.submit(t) for t in tasks]))

        prev = None  # (slot, its carried rows, liveness of its delivery) of the previous window
        taken = None  # the slot of the window being waited for, until it becomes prev
        try:
            for _ in range(max(2, -(-self.workers // self.window) + 1)):  # enough windows to keep all busy
                submit()
            while pending and not stop.is_set():
                w, taken, tickets = pending.popleft()
                pool.wait(tickets)
                buf = taken.window(w.n)
                if w.carried:
                    place_block(buf, prev[1], w.places[0])
                if prev is not None:
                    ring.retire(prev[0], prev[2])
                delivered = buf[:, :w.usable]  # torch's storage holds this very array
                prev, taken = (taken, buf[:, w.usable:], _alive(delivered)), None
                submit()
                if w.usable:
                    t = torch.from_numpy(delivered)
                    yield t[:f].T, t[f], None
                    del t
                del buf, delivered
        finally:
            pool.cancel()  # whatever is still queued is for windows nobody will read
            pool.drain()
            if prev is not None:
                ring.retire(prev[0], prev[2])
            if taken is not None:  # its wait failed (a decode error): nothing of it was delivered
                ring.retire(taken, lambda: False)
            for _, slot, _ in pending:
                ring.retire(slot, lambda: False)
            self._one_epoch.release()

    def _decoded_windows_procs(self, rng: np.random.Generator, stop: threading.Event,
                               stream: torch.cuda.Stream) -> Iterator[tuple[list, bool]]:
        """``_decoded_windows`` from worker processes: each window's row groups are decoded side
        by side into one pinned slot and delivered as one block; the slot is reused once the
        copy that ``_window_gpu`` queued on ``stream`` has run."""
        pool, ring = self._claim_decoders()  # released in the finally below
        names = tuple(self.columns + [self.label])
        order = self._order(rng)
        windows = iter([order[i:i + self.window] for i in range(0, len(order), self.window)])
        pending: collections.deque = collections.deque()

        def submit() -> None:
            groups = next(windows, None)
            if groups is None:
                return
            slot = ring.acquire()
            starts = np.cumsum([0] + [g.rows for g in groups])
            n = int(starts[-1])
            tickets = [pool.submit(Decode(slot.id, self.url, g, names, len(names), n, start=int(a)))
                       for g, a in zip(groups, starts)]
            pending.append((slot, n, tickets))

        try:
            for _ in range(max(2, -(-self.workers // self.window) + 1)):
                submit()
            while pending and not stop.is_set():
                slot, n, tickets = pending.popleft()
                try:
                    pool.wait(tickets)
                    submit()
                    yield [torch.from_numpy(slot.window(n))], not pending
                finally:  # delivered, failed, or stopped at the yield after its copy was queued
                    copied = torch.cuda.Event()
                    copied.record(stream)
                    ring.retire(slot, lambda ev=copied: not ev.query())
        finally:
            pool.cancel()  # whatever is still queued is for windows nobody will read
            pool.drain()
            for slot, _, _ in pending:
                ring.retire(slot, lambda: False)
            self._one_epoch.release()

    def _decoded_windows(self, rng: np.random.Generator, stop: threading.Event) -> Iterator[tuple[list, bool]]:
        """``(blocks, last)``: the decoded row groups of each window, in the epoch's order."""
        order = self._order(rng)
        with ThreadPoolExecutor(self.workers, thread_name_prefix=f"decode-rank{self.rank}") as pool:
            pending: collections.deque[Future] = collections.deque()
            todo = iter(order)
            for g in todo:  # keep every worker busy plus one window ahead
                pending.append(pool.submit(self._decode, g))
                if len(pending) >= self.workers + self.window:
                    break
            try:
                while pending and not stop.is_set():
                    blocks = []
                    for _ in range(min(self.window, len(pending))):
                        blocks.append(pending.popleft().result())
                        nxt = next(todo, None)
                        if nxt is not None:
                            pending.append(pool.submit(self._decode, nxt))
                    yield blocks, not pending
            finally:
                for f in pending:
                    f.cancel()

    def _usable(self, n: int, last: bool) -> int:
        """Rows of a window to deliver now: whole batches, plus the tail in the last window."""
        return n if last and not self.drop_last else n - n % self.batch_size

    def _window_gpu(self, blocks: list[torch.Tensor], carry, last: bool, rng: np.random.Generator,
                    stream: torch.cuda.Stream):
        """Pinned blocks go to the device as they are; the shuffle (a gather of rows) and the
        transposition to row-major run on the GPU, on the loader's stream. The positions are
        drawn exactly as on the CPU and gathered by their inverse (``window_order``), so a seed
        gives the same batches on either."""
        f = len(self.columns)
        with torch.cuda.stream(stream):
            parts = ([carry] if carry is not None else []) + [b.to(self.device, non_blocking=True) for b in blocks]
            g = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            n = g.shape[1]
            usable = self._usable(n, last)
            if not self.shuffle:
                x, y = g[:f, :usable].T.contiguous(), g[f, :usable]
                carry = g[:, usable:] if usable < n else None
            else:
                rows = torch.from_numpy(window_order(draw_positions(rng, n, self.batch_size))).to(self.device)
                x, y = g[:f].T.index_select(0, rows[:usable]), g[f].index_select(0, rows[:usable])
                carry = g.index_select(1, rows[usable:]) if usable < n else None
            ready = torch.cuda.Event()
            ready.record(stream)
        if last:
            carry = None
        return ((x, y, ready) if usable else None), carry

    def _chunks(self, g: RowGroup):
        """One row group's columns (features, then the label), a few at a time, checked against
        its footer (``training.parquet_groups.column_chunks``)."""
        return column_chunks(self.fs, g, self.columns + [self.label])

    def _decode(self, g: RowGroup) -> torch.Tensor:
        """One row group as a column-major ``[f + 1, rows]`` float32 block (label last), pinned
        when the target is a GPU: each column is one contiguous copy out of Arrow's buffer (a
        row-major fill would stride through memory). Kept for later epochs while the cache
        has room; nothing changes a block once made."""
        cached = self._cache.get(g)
        if cached is not None:
            return cached
        pinned = self.device.type == "cuda"
        block = torch.empty((len(self.columns) + 1, g.rows), dtype=torch.float32, pin_memory=pinned)
        out = block.numpy()
        for first, values in self._chunks(g):
            for j, column in enumerate(values, first):
                out[j] = column
        if self._reserve(g, pinned):
            self._cache[g] = block
        return block

    def _decode_into(self, g: RowGroup, buf: np.ndarray, at: slice | np.ndarray) -> None:
        """Decode a row group into its positions of a window's buffer (see ``_plan``), each chunk
        of columns placed while it is still in the cache; or place it from the decoded-row-group
        cache, without reading the file. A row group is kept once it is whole, if there is room."""
        cached = self._cache.get(g)
        if cached is not None:
            place_columns(buf, cached.numpy(), at)
            return
        cost = self._reserve(g)
        keep = torch.empty((len(self.columns) + 1, g.rows), dtype=torch.float32) if cost else None
        kept = keep.numpy() if keep is not None else None
        try:
            for first, values in self._chunks(g):
                place_columns(buf[first:first + len(values)], values, at)
                if kept is not None:
                    kept[first:first + len(values)] = values
        except BaseException:
            self._release(cost)
            raise
        if keep is not None:
            self._cache[g] = keep

    def _cache_cost(self, g: RowGroup, pinned: bool = False) -> int:
        nbytes = (len(self.columns) + 1) * g.rows * 4
        # torch's pinned-memory allocator rounds every block up to a power of two
        return 1 << (nbytes - 1).bit_length() if pinned else nbytes

    def _reserve(self, g: RowGroup, pinned: bool = False) -> int:
        """The room taken in the cache for ``g``, 0 when it has none (a row group that did not
        fit is decoded every epoch)."""
        cost = self._cache_cost(g, pinned)
        with self._cache_lock:
            if g in self._cache or self._cache_reserved + cost > self.cache_bytes:
                return 0
            self._cache_reserved += cost
            return cost

    def _release(self, cost: int) -> None:
        """Give back the room a reservation took (its row group's decoding failed)."""
        with self._cache_lock:
            self._cache_reserved -= cost


def auto_cache_bytes(shard_bytes: int, ranks: int) -> int:
    """The default decoded-row-group cache: the whole shard when it takes at most a quarter of
    the memory available now divided among ``ranks`` (ranks on one host share its memory; the
    world size bounds how many do), else none. Reading ``MemAvailable`` needs Linux; elsewhere
    there is no cache by default."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0
    return shard_bytes if shard_bytes <= available // (4 * max(1, ranks)) else 0


def _alive(array: np.ndarray):
    """True while ``array`` exists. Given the exact array passed to ``torch.from_numpy``, that is
    while any tensor viewing it does (the tensors' storage holds it); numpy views of it would not
    do, since they point past it to the memory's owner."""
    ref = weakref.ref(array)
    return lambda: ref() is not None


def _pin(slot: Slot, pinned: list) -> None:
    """Register a slot with CUDA as page-locked memory, so copies from it are asynchronous;
    ``pinned`` lists what ``_stop_decoders`` unregisters."""
    view = np.frombuffer(slot.mm, np.uint8)
    err = int(torch.cuda.cudart().cudaHostRegister(view.ctypes.data, slot.nbytes, 0))
    if err:
        raise RuntimeError(f"cudaHostRegister of a {slot.nbytes}-byte decode slot failed (cudaError {err})")
    pinned.append((view.ctypes.data, view))


def _stop_decoders(pool: DecodePool, pinned: list) -> None:
    pool.close()
    while pinned:
        torch.cuda.cudart().cudaHostUnregister(pinned.pop()[0])


@dataclass(frozen=True)
class _Window:
    """One shuffle window of an epoch, planned from row counts (see ``ShardLoader._plan``).

    Segment 0 is the rows carried in from the previous window, segment ``k`` the ``k``-th row
    group: source rows ``starts[k]..starts[k+1]-1``."""

    groups: list[RowGroup]
    carried: int  # rows carried in from the previous window: segment 0
    usable: int  # positions 0..usable-1 are delivered, the rest carried on
    last: bool
    starts: list[int]  # segment boundaries in source rows; starts[-1] is the window's row count
    # shuffled: the position of each source row (int32, training.scatter.draw_positions; what
    # worker processes read from a slot); None in storage order, where positions are source rows
    at: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.starts[-1]

    @property
    def places(self) -> list[slice | np.ndarray]:
        """Per segment: the positions of its rows, a slice of them in storage order."""
        bounds = list(zip(self.starts[:-1], self.starts[1:]))
        return [slice(a, b) for a, b in bounds] if self.at is None else [self.at[a:b] for a, b in bounds]
