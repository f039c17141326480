"""Row-group decoding in worker processes, into memory shared with the training process.

Why processes: decoding threads share the training process's GIL. A loop that launches GPU
kernels holds the GIL nearly all the time, and a decoding thread needs it back for every column
it copies; each hand-over can wait a whole switch interval (5 ms). So the threads and the loop
take turns instead of overlapping (docs/benchmarks.md measures it). A worker here is a separate
Python process, started as ``python -m training.decode_pool``, with a GIL of its own. It reads
its row groups with pyarrow and writes their rows straight into a shared-memory *slot*, which the
training process reads without a copy (and, for a GPU, registers as pinned memory).

- Slots are anonymous memory files (``memfd``) whose descriptors go to the workers over their
  Unix sockets, so nothing is left behind in /dev/shm if a process is killed.
- Each worker handles its tasks in order and answers each one, so a caller that waits for its
  tasks in the order it submitted them always reads the answer it expects next.
- A worker exits when its socket closes, which also happens when the training process dies: no
  orphaned decoders.
- ``cancel()`` bumps a counter in a shared page; a worker answers the tasks submitted before it
  without decoding them, so an epoch stopped early does not wait for windows nobody will read.

This module imports neither torch nor the rest of ``training`` (a worker starts in well under a
second); the parent side is used by ``training.loader.ShardLoader(processes=True)``.
"""

from __future__ import annotations

import collections
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path
from typing import Callable, Generic, TypeVar

import numpy as np

from training.parquet_groups import RowGroup

T = TypeVar("T")


@dataclass(frozen=True)
class Decode:
    """Decode one row group into a slot's ``[width, n]`` float32 window (column-major).

    ``start`` set: the rows go to positions ``start..start+rows-1`` in storage order. Otherwise
    row ``i`` goes to position ``index[a + i]`` of the slot's index (the shuffle, see
    ``ShardLoader._plan``)."""

    slot: int
    url: str
    group: RowGroup
    names: tuple[str, ...]
    width: int
    n: int
    start: int | None = None
    a: int = 0
    b: int = 0


class Slot:
    """One shared buffer: a float32 window of up to ``rows`` x ``width`` values, then an int32
    index of ``rows`` entries (the position of each source row of the shuffle)."""

    def __init__(self, ident: int, fd: int, width: int, rows: int) -> None:
        self.id, self.width, self.rows = ident, width, rows
        self.nbytes = slot_bytes(width, rows)
        self.mm = mmap.mmap(fd, self.nbytes)

    def window(self, n: int) -> np.ndarray:
        """A new ``[width, n]`` float32 array over the slot (a fresh object each call, so the
        caller can tell from a weak reference when every view of this delivery is gone)."""
        return np.frombuffer(self.mm, np.float32, self.width * n).reshape(self.width, n)

    def index(self) -> np.ndarray:
        return np.frombuffer(self.mm, np.int32, self.rows, self.width * self.rows * 4)


def slot_bytes(width: int, rows: int) -> int:
    return (width + 1) * rows * 4


def _memory_file(nbytes: int) -> int:
    """An anonymous file of ``nbytes``: a memfd, or an unlinked temporary file where there is none."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("dlpipe-slot", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="dlpipe-slot-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.unlink(path)
    os.ftruncate(fd, nbytes)
    return fd


class DecodePool:
    """``workers`` decoding processes and the slots they write into.

    Not thread-safe: one thread submits and waits (the loader's producer thread).
    """

    def __init__(self, workers: int, *, label: str = "decode", answer_timeout_s: float = 600.0) -> None:
        self.label, self.answer_timeout_s = label, answer_timeout_s
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._outstanding: list[collections.deque[int]] = []
        self._slots: list[Slot] = []
        self._next_task = 0
        self._rr = 0
        self._generation = 0  # tasks of older generations are cancelled
        self.skipped = 0  # tasks answered without decoding, after a cancel()
        self.broken: str | None = None
        self.closed = False
        root = str(Path(__file__).resolve().parents[1])  # where the ``training`` package lives
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        control = _memory_file(8)  # the current generation, an int64 every worker maps
        self._control_map = mmap.mmap(control, 8)
        self._control = np.frombuffer(self._control_map, np.int64)
        try:
            for i in range(workers):
                ours, theirs = socket.socketpair()
                proc = subprocess.Popen([sys.executable, "-m", "training.decode_pool", str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
                theirs.close()
                self._procs.append(proc)
                self._conns.append(Connection(ours.detach()))
                self._outstanding.append(collections.deque())
                send_handle(self._conns[i], control, proc.pid)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(control)

    def new_slot(self, width: int, rows: int) -> Slot:
        """A new shared slot, mapped here and in every worker."""
        self._check_open()
        fd = _memory_file(slot_bytes(width, rows))
        try:
            slot = Slot(len(self._slots), fd, width, rows)
            for i, conn in enumerate(self._conns):
                self._send(i, ("map", slot.id, width, rows))
                try:
                    send_handle(conn, fd, self._procs[i].pid)
                except OSError as exc:
                    raise self._dead(i, exc) from exc
        finally:
            os.close(fd)
        self._slots.append(slot)
        return slot

    def submit(self, task: Decode) -> tuple[int, int]:
        """Hand ``task`` to the next worker in turn; the ticket to wait for."""
        self._check_open()
        i, self._rr = self._rr, (self._rr + 1) % len(self._conns)
        tid, self._next_task = self._next_task, self._next_task + 1
        self._send(i, ("decode", tid, self._generation, task))
        self._outstanding[i].append(tid)
        return i, tid

    def wait(self, tickets: list[tuple[int, int]]) -> None:
        """Block until these tasks are done, in the order submitted; re-raise a worker's error."""
        self._check_open()
        error = None
        for i, tid in tickets:
            while self._outstanding[i]:
                got, exc = self._recv(i)
                if got == tid:
                    error = error or exc
                    break
        if error is not None:
            raise error

    def cancel(self) -> None:
        """Let the workers skip every task submitted so far (their answers still come)."""
        self._generation += 1
        self._control[0] = self._generation

    def drain(self) -> None:
        """Wait out every task still queued (an epoch stopped early), ignoring their errors."""
        for i in range(len(self._conns)):
            while self._outstanding[i] and not self.broken:
                try:
                    self._recv(i)
                except RuntimeError:
                    return

    def close(self) -> None:
        """Stop the workers. The lists stay as they are: an epoch's thread may be waiting in
        ``_recv`` right now, and finds its connection closed (an OSError it reports as the pool
        closed), never a list emptied under it."""
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            conn.close()  # a worker exits at end of file
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _check_open(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _closed_error(self) -> RuntimeError:
        return RuntimeError(f"the {self.label} workers were closed (ShardLoader.close()) while an epoch was still "
                            f"reading: finish or close the epoch's generator before closing its loader")

    def _send(self, i: int, msg: tuple) -> None:
        try:
            self._conns[i].send(msg)
        except OSError as exc:
            raise self._dead(i, exc) from exc

    def _recv(self, i: int) -> tuple[int, BaseException | None]:
        conn = self._conns[i]
        try:
            if not conn.poll(self.answer_timeout_s):  # a stopped or stuck worker
                raise TimeoutError(f"no answer in {self.answer_timeout_s:g} s")
            tid, exc, skipped = conn.recv()
        except (EOFError, OSError) as exc:  # TimeoutError is an OSError; so is a connection close() closed
            raise self._dead(i, exc) from exc
        self.skipped += skipped
        expected = self._outstanding[i].popleft()
        assert tid == expected, f"worker {i} answered task {tid}, expected {expected}"
        return tid, exc

    def _dead(self, i: int, exc: BaseException) -> RuntimeError:
        if self.closed:  # closed under a waiting epoch: no worker failed
            return self._closed_error()
        proc = self._procs[i]
        try:
            code = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        self.broken = (f"{self.label} worker {i} (pid {proc.pid}) "
                       f"{'exited with code ' + str(code) if code is not None else 'stopped answering'} "
                       f"({type(exc).__name__}: {exc}); its row groups were not decoded")
        return RuntimeError(self.broken)


class SlotRing(Generic[T]):
    """Buffers handed out for windows and taken back once nothing uses them any more: the shared
    slots of process mode, and the plain window buffers of thread mode.

    ``retire(item, busy)``: ``busy()`` tells whether a delivery still uses the buffer (a live view
    on the CPU, an unfinished copy on the GPU). A buffer is reused only once it is not busy; if
    every one is busy, ``make()`` gives a new one, so a consumer that keeps batches costs memory,
    never data. ``keep``: at most this many retired buffers are held for reuse (older ones are
    left to the garbage collector); None keeps all, as slots the workers have mapped must be.
    """

    def __init__(self, make: Callable[[], T], keep: int | None = None) -> None:
        self.make, self.keep = make, keep
        self.size = 0  # buffers made so far
        self._retired: list[tuple[T, Callable[[], bool]]] = []
        self._lock = threading.Lock()  # thread mode: epochs may overlap while one is closing

    def acquire(self) -> T:
        with self._lock:
            for k, (item, busy) in enumerate(self._retired):
                if not busy():
                    del self._retired[k]
                    return item
            self.size += 1
        return self.make()

    def retire(self, item: T, busy: Callable[[], bool]) -> None:
        with self._lock:
            self._retired.append((item, busy))
            if self.keep is not None:
                del self._retired[:-self.keep]


# -- worker side -------------------------------------------------------------------------------

def _decode(task: Decode, slots: dict[int, Slot], filesystems: dict) -> None:
    from training.parquet_groups import column_chunks
    from training.scatter import place_columns
    import pyarrow.fs as pafs

    if task.url not in filesystems:
        filesystems[task.url] = pafs.FileSystem.from_uri(task.url)[0]
    slot = slots[task.slot]
    buf = np.frombuffer(slot.mm, np.float32, task.width * task.n).reshape(task.width, task.n)
    if task.start is not None:
        at = slice(task.start, task.start + task.group.rows)
    else:
        at = slot.index()[task.a:task.b]
    for first, values in column_chunks(filesystems[task.url], task.group, list(task.names)):
        place_columns(buf[first:first + len(values)], values, at)


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _use_mimalloc() -> None:
    """Decode with Arrow's mimalloc pool unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise. With
    jemalloc (Arrow's default on Linux) a worker hands the memory of each decoded row group
    back to the kernel and faults it in again for the next one: on a VM, 50,000 to 150,000 page
    faults an epoch, which made a worker 1.5x slower than a decoding thread. mimalloc keeps it."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.mimalloc_memory_pool())
    except (AttributeError, NotImplementedError):  # a pyarrow built without mimalloc
        pass


def _serve(fd: int) -> None:
    _use_mimalloc()
    conn = Connection(fd)
    handle = recv_handle(conn)
    generation = np.frombuffer(mmap.mmap(handle, 8), np.int64)  # raised by DecodePool.cancel()
    os.close(handle)
    slots: dict[int, Slot] = {}
    filesystems: dict = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the training process closed the pool, or died
        if msg[0] == "map":
            _, ident, width, rows = msg
            handle = recv_handle(conn)
            slots[ident] = Slot(ident, handle, width, rows)
            os.close(handle)
        else:
            _, tid, task_generation, task = msg
            try:
                if task_generation < generation[0]:
                    answer = (tid, None, True)  # cancelled: answered, not decoded
                else:
                    _decode(task, slots, filesystems)
                    answer = (tid, None, False)
            except Exception as exc:  # handed to the training process, which raises it
                answer = (tid, _picklable(exc), False)
            try:
                conn.send(answer)
            except OSError:
                return  # the pool was closed while this task ran


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
