"""Helpers shared by the benchmark scripts: machine description, tables, a local S3 server."""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def int_at_least(low: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers >= ``low``. argparse puts the flag in front of the
    message, so a bad value stops the script before any data is written, naming the flag, the
    value and the fix; ``why`` says what needs the bound (e.g. ``", the medians leave out round
    1"``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one >= {low}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}{why}; give {low} or more")
        return value
    parse.__name__ = f"int >= {low}"  # what argparse calls the type in its own messages
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB RAM, Python {platform.python_version()}"


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    fmt = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, cells)])


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server as a separate process on loopback; yields its endpoint URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def bench_bucket(endpoint: str) -> Any:
    """A boto3 client of ``endpoint`` (moto's test keys) with an empty bucket named ``bench``."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
    client.create_bucket(Bucket="bench")
    return client
