"""Several weights clustered at once on threads: numpy releases the GIL in the loops that take
the time on large tensors (bincount, take, searchsorted, arithmetic), so each core clusters a
tensor. Results come back in the weights' order, and only a few are held at once."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Threads at most: each holds a tensor's labels and working buffers (about 2x its float size).
MAX_WORKERS = 4
# Models with fewer elements to cluster in all run on one thread: there, per-call overhead
# (holding the GIL) is most of the time and threads would only take turns.
PARALLEL_ELEMENTS = 1 << 23


def worker_count(elements: int) -> int:
    """Threads for clustering `elements` values in all: one per usable core (at most
    MAX_WORKERS) for large models, else one."""
    if elements < PARALLEL_ELEMENTS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_WORKERS, cores or 1))


def in_order(
    work: Callable[[Item], Result], items: Iterable[Item], workers: int
) -> Iterator[Result]:
    """`map(work, items)` on `workers` threads: results in the items' order, at most
    workers + 1 of them computed ahead of the one the caller is using."""
    if workers <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="mcompress-cluster") as pool:
        pending: deque[Future[Result]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
