"""How many bytes a model (and its external data) takes gzipped: the size a download or an
archive of it would have, which is what pruning and clustering shrink even before packing."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from mcompress.model_io import data_files

# Bytes gzip_size reads at a time: a fraction of a second of level-6 work, how soon a stop is
# noticed (figures in benchmarks/README.md).
_GZIP_CHUNK = 2**22
# Models up to this size get their exact gzip size; larger ones an estimate from evenly spaced
# samples, which takes about as long at any size as an exact count of this many bytes.
GZIP_EXACT_LIMIT = 2**20
_GZIP_SAMPLES = 32
_GZIP_SAMPLE = 2**15


def gzip_size(path: str | os.PathLike[str], files: list[Path] | None = None) -> int:
    """Bytes of the model (and its data files, `files` as for `disk_size`) after gzip level 6;
    estimated for models over `GZIP_EXACT_LIMIT` bytes (see `gzip_estimated`)."""
    path = Path(path)
    with gzip_size_started(path, data_files(path) if files is None else files) as size:
        return size.result()


def gzip_estimated(size_bytes: int) -> bool:
    """Whether `gzip_size` of a model this large is a sampled estimate rather than the exact
    count (close: see benchmarks/README.md for how close on which models)."""
    return size_bytes > GZIP_EXACT_LIMIT


@contextlib.contextmanager
def gzip_size_started(path: Path, files: list[Path]) -> Iterator[Future[int]]:
    """`gzip_size(path, files)`, computed on a thread while the block runs.

    zlib releases the GIL, so the time it takes overlaps the caller's own work instead of
    adding to it. The files are opened at once: replacing them meanwhile (an output saved
    over its input) does not change what is measured. Read the result inside the block;
    leaving it stops the thread.
    """
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(open(f, "rb")) for f in [path, *files]]
        sizes = [os.fstat(s.fileno()).st_size for s in streams]
        count = _gzip_sampled if gzip_estimated(sum(sizes)) else _gzip_count
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="mcompress-gzip"))
        try:
            yield pool.submit(count, streams, sizes, stop)
        finally:
            stop.set()


def _gzip_count(streams: Sequence[BinaryIO], sizes: list[int], stop: threading.Event) -> int:
    """Bytes of the streams concatenated into one gzip stream at level 6 (zlib, as Python's
    `gzip` module writes it); -1 once `stop` is set, which only an abandoned caller sees."""
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip header and trailer
    count = 0
    for stream in streams:
        while chunk := stream.read(_GZIP_CHUNK):
            if stop.is_set():
                return -1
            count += len(gz.compress(chunk))
    return count + len(gz.flush())


def _gzip_sampled(streams: Sequence[BinaryIO], sizes: list[int], stop: threading.Event) -> int:
    """`_gzip_count` estimated: the deflate ratio of one sample from the middle of each of
    `_GZIP_SAMPLES` equal slices of the concatenated streams, times their total size."""
    total = sum(sizes)
    starts = list(itertools.accumulate(sizes, initial=0))
    read = packed = 0
    for i in range(_GZIP_SAMPLES):
        if stop.is_set():
            return -1
        where = max((2 * i + 1) * total // (2 * _GZIP_SAMPLES) - _GZIP_SAMPLE // 2, 0)
        index = bisect.bisect_right(starts, where) - 1
        streams[index].seek(where - starts[index])
        sample = streams[index].read(_GZIP_SAMPLE)
        deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        packed += len(deflate.compress(sample)) + len(deflate.flush())
        read += len(sample)
    return round(packed / max(read, 1) * total) + 18  # + gzip header and trailer
