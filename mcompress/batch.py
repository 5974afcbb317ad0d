"""Compress many models with one pipeline config in parallel worker processes.

The parent runs the planned jobs (batch_plan.py: discovery, unique output names, per-model
data) in a process pool and collects one row per model; a model that fails never stops the others.
Interrupting stops the workers and removes every output of a model that did not finish.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import signal
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcompress import __version__, config, pipeline, render
from mcompress.batch_plan import Job
from mcompress.errors import (
    EXIT_BAD_INPUT,
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    McompressError,
    interrupt_exit_code,
)
from mcompress.outputs import Outputs, sweep_stale, write_file
from mcompress.processes import (
    deferred_signals,
    die_with_parent,
    signal_name_of,
    stop_on_signals,
    stop_processes,
)
from mcompress.report import RunReport, finite
from mcompress.scratch import multiprocessing_temp_outside

SUMMARY_SCHEMA_VERSION = 1
# Exit codes from most to least severe: the batch exits with the most severe one of its rows.
_SEVERITY = [EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_OK]
# Seconds stopped workers get to exit before they are killed (local pool and Ray).
STOP_GRACE_SECONDS = 10.0


@dataclass
class Row:
    """The outcome of one job, as listed in summary.json and the summary table."""

    model: str
    name: str
    status: str  # ok | gate_failed | failed | interrupted
    exit_code: int
    output: str | None = None
    report: str | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    ratio: float | None = None
    metric: dict[str, Any] | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: dict[str, Any] | None = None


@dataclass
class Outcome:
    """All rows of a batch, in input order, and whether (by which signal) it was interrupted."""

    rows: list[Row]
    jobs: int
    seconds: float
    interrupted: bool = False
    signal_name: str = "SIGINT"  # what interrupted it: SIGINT (Ctrl-C) or SIGTERM

    @property
    def exit_code(self) -> int:
        """130 / 143 when interrupted by SIGINT / SIGTERM, else the most severe exit code of
        any row (internal > bad input > gate failed > ok)."""
        if self.interrupted:
            return interrupt_exit_code(self.signal_name)
        codes = {row.exit_code for row in self.rows}
        return next((code for code in _SEVERITY if code in codes), EXIT_OK)


# Events the parent receives while jobs run: (kind, job index, payload).
Listener = Callable[[str, int, Any], None]


# ---------------------------------------------------------------- running


def run_batch(jobs: list[Job], n_jobs: int, listener: Listener) -> Outcome:
    """Run `jobs` in `n_jobs` worker processes; `listener` hears start/progress/done events.

    When a worker dies (killed for memory, a crash in native code) the pool stops every
    worker, so the models that were running are retried one at a time to find the one that
    kills its worker; only that one fails. On KeyboardInterrupt (or SIGTERM) the workers are
    stopped, outputs of unfinished models are removed and the outcome is marked interrupted.
    """
    started = time.perf_counter()
    context = _context()
    state = _State(context.Queue(), context.Event(), listener)
    remaining: list[Job] = list(jobs)
    suspects: list[Job] = []
    stopped_by: str | None = None
    try:
        with stop_on_signals():
            while remaining or suspects:
                if suspects:
                    never_ran, crashed = _run_pool([suspects.pop(0)], 1, context, state)
                    for job in never_ran + crashed:
                        state.finish(job, _died(job))
                    continue
                remaining, crashed = _run_pool(remaining, n_jobs, context, state)
                # a job caught in a second pool failure is isolated too (its "start" may have
                # been lost with the worker), so every job runs in a bounded number of pools
                suspects = crashed + [j for j in remaining if state.failures[j.index] > 1]
                remaining = [j for j in remaining if state.failures[j.index] <= 1]
    except KeyboardInterrupt as exc:
        stopped_by = signal_name_of(exc)
        _sweep(jobs)
        for job in jobs:
            if job.index not in state.rows:
                state.rows[job.index] = interrupted_row(job, stopped_by)
    ordered = [state.rows[j.index] for j in jobs]
    seconds = time.perf_counter() - started
    return Outcome(ordered, n_jobs, seconds, stopped_by is not None, stopped_by or "SIGINT")


def interrupted_row(job: Job, signal_name: str) -> Row:
    """The row of a model that did not finish because the batch was interrupted."""
    code = interrupt_exit_code(signal_name)
    return Row(model=str(job.input_path), name=job.name, status="interrupted", exit_code=code)


@dataclass
class _State:
    """What the parent tracks while workers run."""

    events: Any  # multiprocessing queue of (kind, job index, payload) from the workers
    stop: Any  # multiprocessing event: set on interrupt, workers then start nothing new
    listener: Listener
    rows: dict[int, Row] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    running: dict[int, int] = field(default_factory=dict)  # job index -> worker pid
    failures: Counter[int] = field(default_factory=Counter)  # pool failures seen per job

    def drain(self) -> None:
        """Handle every event the workers have sent so far."""
        while True:
            try:
                kind, index, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "worker":
                self.pids.add(payload)
                continue
            if kind == "start":
                self.running[index] = payload
            self.listener(kind, index, payload)

    def finish(self, job: Job, row: Row) -> None:
        self.running.pop(job.index, None)
        self.rows[job.index] = row
        self.listener("done", job.index, row)


def _run_pool(
    jobs: list[Job], n_jobs: int, context: Any, state: _State
) -> tuple[list[Job], list[Job]]:
    """Run `jobs` in one process pool. When a worker dies, return the jobs not started yet
    and the jobs that were running (one of them killed its worker)."""
    executor = ProcessPoolExecutor(
        max_workers=min(n_jobs, len(jobs)),
        mp_context=context,
        initializer=_worker_init,
        initargs=(state.events, state.stop, os.getpid()),
    )
    not_started: list[Job] = []
    running: list[Job] = []
    with deferred_signals() as caught:
        try:
            futures = {executor.submit(run_job, job): job for job in jobs}
            pending = set(futures)
            while pending:
                caught.check()
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                state.drain()
                for future in done:
                    job = futures[future]
                    try:
                        state.finish(job, Row(**future.result()))
                    except BrokenProcessPool:
                        was_running = state.running.pop(job.index, None) is not None
                        state.failures[job.index] += 1
                        (running if was_running else not_started).append(job)
        except KeyboardInterrupt:
            state.listener("interrupted", -1, None)
            state.stop.set()
            state.drain()
            stop_processes(state.pids, STOP_GRACE_SECONDS)
            _record_finished(futures, state)
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    if not_started or running:  # only now are their workers gone
        _sweep(jobs)
    return not_started, running


def _record_finished(futures: dict[Any, Job], state: _State) -> None:
    """Rows of models whose results arrived while the batch was being stopped: their outputs
    are complete and stay, so the summary must count them."""
    for future, job in futures.items():
        if job.index in state.rows or not future.done() or future.cancelled():
            continue
        if future.exception() is None:
            state.finish(job, Row(**future.result()))


def _died(job: Job) -> Row:
    """The row of a model whose worker process died while compressing it alone."""
    return Row(
        model=str(job.input_path),
        name=job.name,
        status="failed",
        exit_code=EXIT_INTERNAL,
        error={
            "type": "WorkerDied",
            "message": "the worker process died while compressing this model "
            "(out of memory, or a crash in native code); try --jobs 1",
        },
    )


def _context() -> Any:
    multiprocessing_temp_outside()
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _sweep(jobs: list[Job]) -> None:
    """`remove_outputs` of every job, once per output folder."""
    for folder in {job.output.resolve().parent for job in jobs}:
        sweep_stale(folder)


def remove_outputs(job: Job) -> None:
    """What an unfinished job may have left: the staging folders of gone workers (SIGKILLed
    mid-model). Outputs are claimed only when a model finished, so there is nothing else,
    and files that existed before the run are never touched."""
    sweep_stale(job.output.resolve().parent)


# ---------------------------------------------------------------- worker side

_events: Any = None
_stop: Any = None
_busy = False
_terminating = False


def _worker_init(events: Any, stop: Any, parent: int) -> None:
    """Runs once per worker: Ctrl-C is the parent's business; SIGTERM cleans up and exits;
    the worker dies with the batch process, even when that is killed with SIGKILL."""
    connect_worker(events, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    die_with_parent(parent, STOP_GRACE_SECONDS)
    events.put(("worker", -1, os.getpid()))


def connect_worker(events: Any, stop: Any) -> None:
    """Where this worker process sends its events (anything with `put`) and what tells it to
    start nothing new (anything with `is_set`): a pool worker's queue, or a Ray task's sink."""
    global _events, _stop
    _events = events
    _stop = stop


def _on_sigterm(signum: int, frame: object) -> None:
    global _terminating
    _terminating = True
    if _busy:
        raise KeyboardInterrupt  # unwinds the pipeline: Outputs removes its staging folder
    os._exit(130)


def run_job(job: Job) -> dict[str, Any]:
    """Compress one model (in a worker); return its row as a dict, never raise for its errors.
    Outputs are claimed only once the model is done, so a failed or killed job leaves none."""
    global _busy
    if _stop.is_set():
        os._exit(130)
    _busy = True
    started = time.perf_counter()
    _events.put(("start", job.index, os.getpid()))
    row: dict[str, Any] = {"model": str(job.input_path), "name": job.name}
    try:
        report = _compress_job(job)
        row.update(_report_fields(report.to_dict()))
        row["output"] = str(job.output)
        row["report"] = str(job.report)
        row["status"] = "ok" if report.passed else "gate_failed"
        row["exit_code"] = EXIT_OK if report.passed else EXIT_GATE_FAILED
    except KeyboardInterrupt:
        os._exit(130)
    except McompressError as exc:
        row["status"] = "failed"
        row["exit_code"] = exc.exit_code
        row["error"] = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    except Exception as exc:
        if _terminating:  # SIGTERM inside native code (e.g. an import) surfaces as an error
            os._exit(130)
        log = _error_log(job, exc)
        row["status"] = "failed"
        row["exit_code"] = EXIT_INTERNAL
        row["error"] = {"type": type(exc).__name__, "message": str(exc), "log": log}
    finally:
        _busy = False
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _compress_job(job: Job) -> RunReport:
    """Run the pipeline on one model and claim its model and reports together."""
    with Outputs(job.force) as outs:
        outs.add(job.output, "output")
        outs.add(job.report, "report")
        for path in job.document_paths:
            outs.add(path, "report")
        outs.add_input(job.config_file, "config file")
        report = pipeline.run(
            config.build(job.config),
            pipeline.RunOptions(
                input_path=job.input_path,
                output=job.output,
                outputs=outs,
                command="batch",
                progress=_Throttled(job.index),
            ),
        )
        outs.write_text(job.report, report.to_json())
        for kind, path in zip(job.documents, job.document_paths, strict=True):
            outs.write_text(
                path, (render.to_html if kind == "html" else render.to_markdown)(report)
            )
        outs.commit()
    return report


def _error_log(job: Job, exc: Exception) -> str | None:
    """The traceback of an internal error, in a new uniquely named file beside the outputs."""
    try:
        fd, name = tempfile.mkstemp(
            prefix=f"{job.name[:40]}.error-", suffix=".log", dir=job.output.parent
        )
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return name


class _Throttled:
    """Pipeline progress forwarded to the parent, at most ~10 updates a second per label."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.last: dict[str, float] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last.get(label, 0.0) < 0.1:
            return
        self.last[label] = now
        _events.put(("progress", self.index, (label, done, total)))


def _report_fields(report: dict[str, Any]) -> dict[str, Any]:
    output = report.get("output") or {}
    return {
        "input_bytes": report["input"]["size_bytes"],
        "output_bytes": output.get("size_bytes"),
        "ratio": report.get("compression_ratio"),
        "metric": key_metric(report.get("validation")),
        "gates": [
            {k: g.get(k) for k in ("name", "threshold", "value", "passed")}
            for g in report.get("gates", [])
        ],
    }


def key_metric(validation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The one number a summary row shows: accuracy drop with labels, else agreement/cosine."""
    if not validation:
        return None
    task = validation.get("task")
    if isinstance(task, dict) and task.get("accuracy_drop") is not None:
        return {"name": "accuracy drop", "value": task["accuracy_drop"]}
    overall = validation.get("overall") or {}
    for key, label in (("top1_agreement", "top-1 agreement"), ("cosine", "cosine")):
        if overall.get(key) is not None:
            return {"name": label, "value": overall[key]}
    return None


# ---------------------------------------------------------------- summary


def summary(
    outcome: Outcome, config_name: str, out_dir: Path, shard: dict[str, Any] | None = None
) -> dict[str, Any]:
    """summary.json: the batch's settings, counts and one row per model (plus, for a shard,
    which of the batch's models its rows are: see Shard.describe)."""
    counts: dict[str, int] = {}
    for row in outcome.rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    data = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "mcompress_version": __version__,
        "config": config_name,
        "out_dir": str(out_dir),
        "jobs": outcome.jobs,
        "seconds": round(outcome.seconds, 3),
        "interrupted": outcome.interrupted,
        "exit_code": outcome.exit_code,
        "counts": counts,
        "models": [asdict(row) for row in outcome.rows],
    }
    if shard is not None:
        data["shard"] = shard
    return data


def write_summary(
    data: dict[str, Any], out_dir: Path, force: bool, name: str = "summary.json"
) -> Path:
    """Write the summary into the output folder (checked, staged, claimed like any output)."""
    path = out_dir / name
    text = json.dumps(finite(data), indent=2, allow_nan=False, default=str)
    write_file(path, text, force, name)
    return path
