"""`batch --executor ray`: one Ray task per model, on a Ray cluster or a local Ray instance.

Each task runs the local pool's per-model function (`batch.run_job`), so outputs, reports and
summary rows are the same. Inputs and outputs must be paths every node sees (a shared file
system mounted at the same place); that is checked on every node before any task runs. A
worker that dies is retried once by Ray, then its model is a failed row; Ctrl-C or SIGTERM
cancels the outstanding tasks and removes what the unfinished models wrote.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

from mcompress import __version__, batch, batch_plan
from mcompress.batch import Listener, Outcome, Row
from mcompress.batch_plan import Job
from mcompress.errors import EXIT_INTERNAL, UsageError
from mcompress.processes import signal_name_of, stop_on_signals
from mcompress.runtime import error_line

INSTALL_COMMAND = "pip install 'mcompress[ray]'"
_POLL_SECONDS = 0.1
_PROBE_TIMEOUT_SECONDS = 120.0
_MARKER_PREFIX = ".mcompress-probe-"


def import_ray() -> ModuleType:
    """The `ray` module, or exit 2 naming the install command."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--executor ray needs Ray, which is not installed", f"run: {INSTALL_COMMAND}"
        ) from None
    return ray


def run_batch(jobs: list[Job], listener: Listener, address: str | None = None) -> Outcome:
    """Run `jobs` as Ray tasks on the cluster at `address` (None: RAY_ADDRESS, else a new
    local instance; an already connected driver is used as it is). Same events, rows and
    interrupt semantics as `batch.run_batch`."""
    with _connected(address) as ray:
        if not jobs:
            return Outcome([], 0, 0.0)
        check_nodes(ray, jobs)
        return _Run(ray, jobs, listener).run()


@contextmanager
def _connected(address: str | None) -> Iterator[ModuleType]:
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    options: dict[str, Any] = {"include_dashboard": False} if local else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at '{address}'" if address else "(RAY_ADDRESS or a local instance)"
        raise UsageError(f"cannot connect to Ray {where}: {error_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- shared storage


def check_nodes(ray: ModuleType, jobs: list[Job]) -> None:
    """Before submitting: every alive node runs this mcompress version and sees the working
    directory, every input (models, validation data) and the output folders, at the same
    paths as this process (it must find a marker file written here into each output folder)."""
    folders = sorted({job.output.parent.resolve() for job in jobs})
    markers = [folder / f"{_MARKER_PREFIX}{uuid.uuid4().hex}" for folder in folders]
    paths = [str(path) for path in markers]
    for job in jobs:
        paths.append(str(job.input_path))
        data = (job.config.get("validate") or {}).get("data")
        if data:
            paths.append(str(data))
    try:
        for marker in markers:
            marker.write_bytes(b"")
        for node, (missing, version) in _ask_nodes(ray, os.getcwd(), paths):
            _refuse_node(node, missing, version)
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


def _ask_nodes(
    ray: ModuleType, cwd: str, paths: list[str]
) -> Iterator[tuple[str, tuple[str | None, str]]]:
    """(node address, answer of `_node_check`) for every alive node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(_node_check)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    refs = [
        check.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(cwd, paths)
        for node in nodes
    ]
    deadline = time.monotonic() + _PROBE_TIMEOUT_SECONDS
    for node, ref in zip(nodes, refs, strict=True):
        address = node.get("NodeManagerAddress", node["NodeID"])
        try:
            answer = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            raise UsageError(
                f"Ray node {address} did not answer within {_PROBE_TIMEOUT_SECONDS:.0f} s"
            ) from None
        except ray.exceptions.RayError as exc:
            raise UsageError(
                f"Ray node {address} cannot run mcompress: {error_line(exc)}",
                f"install mcompress {__version__} on every node",
            ) from None
        yield address, answer


def _refuse_node(node: str, missing: str | None, version: str) -> None:
    if version != __version__:
        raise UsageError(
            f"Ray node {node} runs mcompress {version}, this is {__version__}",
            "install the same mcompress on every node: outputs must not depend on the node",
        )
    if missing is not None:
        shown = Path(missing).parent if Path(missing).name.startswith(_MARKER_PREFIX) else missing
        raise UsageError(
            f"Ray node {node} does not see '{shown}': inputs and outputs must be on storage "
            "every node mounts at the same path",
            "see 'Running on a Ray cluster' in the README",
        )


def _node_check(cwd: str, paths: list[str]) -> tuple[str | None, str]:
    """On a node: the working directory or the first of `paths` (relative to it) it lacks,
    and the mcompress version it runs."""
    try:
        os.chdir(cwd)
    except OSError:
        return cwd, __version__
    return next((path for path in paths if not os.path.exists(path)), None), __version__


# ---------------------------------------------------------------- worker side


def _compress(job: Job, events: Any, cwd: str) -> dict[str, Any]:
    """The Ray task: the local pool's per-model function, its events sent to the driver."""
    os.chdir(cwd)  # relative paths mean what they mean to the driver
    batch.connect_worker(_ToSink(events), threading.Event())
    return batch.run_job(job)


class _ToSink:
    """A worker's event channel: fire-and-forget calls to the driver's `_EventSink` actor."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def put(self, event: tuple[str, int, Any]) -> None:
        self.sink.put.remote(event)


class _EventSink:
    """A Ray actor collecting (kind, job index, payload) events until the driver takes them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []

    def put(self, event: tuple[str, int, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[tuple[str, int, Any]]:
        events, self.events = self.events, []
        return events


# ---------------------------------------------------------------- driver side


class _Run:
    """One batch on Ray: submit every job, stream events and rows as tasks finish."""

    def __init__(self, ray: ModuleType, jobs: list[Job], listener: Listener) -> None:
        self.ray = ray
        self.jobs = jobs
        self.listener = listener
        self.rows: dict[int, Row] = {}
        self.started: set[int] = set()
        self.sink: Any = None
        self.pending: dict[Any, Job] = {}

    def run(self) -> Outcome:
        started = time.perf_counter()
        stopped_by: str | None = None
        self.sink = self.ray.remote(num_cpus=0)(_EventSink).remote()
        try:
            with stop_on_signals():
                self.ray.get(self.sink.take.remote())  # up before any task sends it events
                self._submit()
                while self.pending:
                    self._step()
        except KeyboardInterrupt as exc:
            stopped_by = signal_name_of(exc)
            self._interrupt(stopped_by)
        finally:
            with suppress(Exception):
                self.ray.kill(self.sink)
        rows = [self.rows[job.index] for job in self.jobs]
        seconds = time.perf_counter() - started
        interrupted = stopped_by is not None
        return Outcome(rows, self._parallelism(), seconds, interrupted, stopped_by or "SIGINT")

    def _submit(self) -> None:
        task = self.ray.remote(_compress)
        largest = max(
            (n["Resources"].get("memory", 0) for n in self.ray.nodes() if n.get("Alive")),
            default=0,
        )
        cwd = os.getcwd()
        for job in self.jobs:
            memory = batch_plan.memory_estimate(job.input_path)
            if largest:  # as the local pool runs one job whatever memory says
                memory = min(memory, int(largest))
            ref = task.options(num_cpus=1, memory=memory, max_retries=1).remote(job, self.sink, cwd)
            self.pending[ref] = job

    def _step(self) -> None:
        done, _ = self.ray.wait(
            list(self.pending), num_returns=len(self.pending), timeout=_POLL_SECONDS
        )
        for ref in done:  # pending until its row is in: an interrupt may come at any point
            self._finish(self.pending[ref], self._row(ref, self.pending[ref]))
            del self.pending[ref]
        self._drain()

    def _drain(self) -> None:
        for kind, index, payload in self.ray.get(self.sink.take.remote()):
            if kind == "start":
                self.started.add(index)
            if kind in ("start", "progress") and index not in self.rows:
                self.listener(kind, index, payload)

    def _finish(self, job: Job, row: Row) -> None:
        if job.index not in self.started:  # its start event may still be on its way
            self._drain()
        self.rows[job.index] = row
        self.listener("done", job.index, row)

    def _row(self, ref: Any, job: Job) -> Row:
        exceptions = self.ray.exceptions
        try:
            return Row(**self.ray.get(ref))
        except exceptions.RayTaskError as exc:  # raised past run_job, e.g. cannot import
            batch.remove_outputs(job)
            cause = exc.cause if exc.cause is not None else exc
            return _failed(job, type(cause).__name__, error_line(cause))
        except exceptions.RayError as exc:  # its worker (or node) died, twice: Ray retried
            batch.remove_outputs(job)
            return _failed(
                job,
                "WorkerDied",
                "the Ray worker died while compressing this model, also when retried "
                f"(out of memory, a crash in native code, or a lost node: {type(exc).__name__})",
            )

    def _interrupt(self, signal_name: str) -> None:
        """Cancel what is queued or running, keep what finished, remove what did not."""
        self.listener("interrupted", -1, None)
        refs = list(self.pending)
        for ref in refs:
            with suppress(Exception):
                self.ray.cancel(ref)
        _, stuck = self.ray.wait(refs, num_returns=len(refs), timeout=batch.STOP_GRACE_SECONDS)
        for ref in stuck:
            with suppress(Exception):
                self.ray.cancel(ref, force=True)
        if stuck:  # their workers are being killed: let them go before removing outputs
            self.ray.wait(stuck, num_returns=len(stuck), timeout=batch.STOP_GRACE_SECONDS)
        for ref, job in self.pending.items():
            if job.index in self.rows:
                continue
            row = None
            if ref not in stuck:
                with suppress(Exception):
                    row = Row(**self.ray.get(ref, timeout=0))
            if row is None:
                batch.remove_outputs(job)
                row = batch.interrupted_row(job, signal_name)
            self.rows[job.index] = row

    def _parallelism(self) -> int:
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return max(1, min(cpus, len(self.jobs)))


def _failed(job: Job, kind: str, message: str) -> Row:
    return Row(
        model=str(job.input_path),
        name=job.name,
        status="failed",
        exit_code=EXIT_INTERNAL,
        error={"type": kind, "message": message},
    )
