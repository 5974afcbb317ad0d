"""Latency and peak memory of an original and a compressed model, measured side by side:
the validation report's `latency` and `memory` figures."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np

from mcompress import latency_stats, runtime
from mcompress.session_pair import SessionPair

WARMUP_RUNS = 3
# Samples stacked into one batch for the second latency measurement, with --data.
DATA_BATCH = 32
# Both models are loaded at once (each in its own process, `model_server`) when their files
# and external data together are at most this large; larger ones one after the other.
SIDE_BY_SIDE_BYTES = 256 * 2**20


def latency(
    sessions: SessionPair,
    feed: dict[str, np.ndarray],
    runs: int,
    tick: Callable[[int], None] = lambda i: None,
) -> dict[str, Any]:
    """Median and p90 milliseconds of `runs` runs of one feed, the models interleaved (unless
    one session is held at a time: then one model after the other)."""
    feeds = [runtime.typed_feed(session, feed) for session in sessions]
    times: list[list[float]] = [[], []]
    # Alternate which model runs first: the second of a pair shares the CPU with the first
    # one's thread pool winding down, a bias that made identical files look slower.
    rounds: list[tuple[int, ...]] = [(1, 0) if i % 2 else (0, 1) for i in range(-WARMUP_RUNS, runs)]
    if sessions.alone:
        rounds = [(k,) for k in sessions.order() for _ in range(WARMUP_RUNS + runs)]
    for i, order in enumerate(rounds):
        for which in order:
            ms = sessions[which].timed_run(feeds[which])
            if i % (WARMUP_RUNS + runs) >= WARMUP_RUNS:
                times[which].append(ms)
        tick((len(times[0]) + len(times[1])) // 2)
    return _summary(feed, runs, times)


def latency_of_samples(
    sessions: SessionPair, feeds: list[dict[str, np.ndarray]], runs: int
) -> dict[str, Any] | None:
    """`latency`'s figures from the runs validation already made, every sample through both
    models in turn (which runs first alternating; timed in the process serving each model):
    after WARMUP_RUNS samples, the next `runs`. None unless every sample has the first one's
    shapes and each model ran (timed) that many: then `latency` runs its own."""
    times = [handle.run_ms for handle in sessions]
    shapes = [{k: v.shape for k, v in feed.items()} for feed in feeds]
    if any(len(t) != len(feeds) for t in times) or len(feeds) < WARMUP_RUNS + runs:
        return None
    if any(s != shapes[0] for s in shapes):
        return None
    chosen = [t[WARMUP_RUNS : WARMUP_RUNS + runs] for t in times]
    return _summary(feeds[0], runs, chosen)


def _summary(feed: dict[str, np.ndarray], runs: int, times: list[list[float]]) -> dict[str, Any]:
    stats = [
        {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90))} for t in times
    ]
    return {
        "input_shapes": {k: list(v.shape) for k, v in feed.items()},
        "warmup_runs": WARMUP_RUNS,
        "runs": runs,
        "original": stats[0],
        "compressed": stats[1],
        **latency_stats.compare(times[0], times[1]),
    }


def batch_latency(
    sessions: SessionPair, feeds: list[dict[str, np.ndarray]], runs: int, notes: list[str]
) -> dict[str, Any] | None:
    """Latency with up to DATA_BATCH data samples stacked on the batch axis, when every input
    has a dynamic first dimension and each feed holds one sample; else None."""
    inputs = sessions[0].get_inputs()
    if len(feeds) < 2 or any(not i.shape or isinstance(i.shape[0], int) for i in inputs):
        return None
    if any(v.ndim == 0 or v.shape[0] != 1 for v in feeds[0].values()):
        return None
    chosen = feeds[:DATA_BATCH]
    batch = {name: np.concatenate([f[name] for f in chosen]) for name in chosen[0]}
    try:
        return latency(sessions, batch, runs)
    except Exception as exc:  # noqa: BLE001 - a model may accept only batch 1
        notes.append(f"no latency at batch {len(chosen)}: {runtime.error_line(exc)}")
        return None


def side_by_side(disk_bytes: int) -> bool:
    """Whether two models whose files and external data total `disk_bytes` are loaded at
    once (each in its own process) for validation, rather than one after the other."""
    return disk_bytes <= SIDE_BY_SIDE_BYTES


def memory(sessions: SessionPair) -> dict[str, Any] | None:
    """Peak resident memory added by loading and running each model once, measured in the
    process serving it (`model_server`; Linux peak-RSS counters, None elsewhere)."""
    peaks = [handle.peak for handle in sessions]
    if None in peaks:
        return None
    original, compressed = (max(int(p or 0), 0) for p in peaks)
    return {
        "method": "peak RSS growth of a fresh process loading and running the model once",
        "original_peak_bytes": original,
        "compressed_peak_bytes": compressed,
        "ratio": compressed / original if original else None,
    }
