"""`mcompress batch`: many models, one config, in parallel."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from mcompress import batch as batch_mod
from mcompress import batch_plan, batch_ray, config, render_batch
from mcompress.cli.common import (
    EXIT_CODES_HELP,
    GATE_OPTIONS,
    WriteOptions,
    app,
    err,
    out,
    shared_options,
    wide_console,
    with_cli_validation,
)
from mcompress.errors import UsageError
from mcompress.render_terminal import human_bytes
from mcompress.shard import Shard

EXIT_INTERRUPTED = 130


class Executor(str, Enum):
    """Where batch runs its models."""

    local = "local"
    ray = "ray"


# The shared options whose meaning differs for many models and one summary.
SUMMARY_HELP = {"json_out": "Print summary JSON to stdout and nothing else."}
_HELP = {
    **SUMMARY_HELP,
    "force": "Overwrite existing outputs.",
    "no_validate": "Skip validation against the originals.",
}

_ConfigOpt = Annotated[
    str, typer.Option("-c", "--config", help="YAML pipeline file, or a preset name (level1...).")
]
_OutDirOpt = Annotated[
    Path, typer.Option("-o", "--out-dir", help="Folder for outputs, reports, summary.json.")
]
_JobsOpt = Annotated[
    int | None,
    typer.Option(
        "-j", "--jobs", min=1, help="Worker processes (default: CPUs, bounded by memory)."
    ),
]
_DataMapOpt = Annotated[
    Path | None,
    typer.Option("--data-map", help="YAML/JSON: model name or glob -> validation .npz."),
]
_ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Compress only shard I of N (CI matrix jobs); writes summary-I-of-N.json.",
    ),
]
_ExecutorOpt = Annotated[
    Executor,
    typer.Option(
        "--executor",
        help="local: worker processes here; ray: one Ray task per model "
        f"({batch_ray.INSTALL_COMMAND}).",
    ),
]
_AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster for --executor ray: auto or ray://HOST:10001 "
        "(default: RAY_ADDRESS, else this machine's Ray cluster or a new one).",
    ),
]
_HtmlOpt = Annotated[bool, typer.Option("--html", help="Also write OUT_DIR/<model>.report.html.")]
_MarkdownOpt = Annotated[
    bool, typer.Option("--markdown", help="Also write OUT_DIR/<model>.report.md.")
]


def paths_argument(help: str) -> Any:
    """The PATHS... argument of batch and batch-merge."""
    return typer.Argument(help=help, metavar="PATHS...", show_default=False)


@app.command(
    epilog=EXIT_CODES_HELP + " batch exits with the most severe code of all models (1 > 2 > 3 "
    "> 0), or 130 / 143 when interrupted (Ctrl-C / SIGTERM)."
)
@shared_options("force", "json_out", "no_validate", "samples", "seed", *GATE_OPTIONS, help=_HELP)
def batch(
    opts: WriteOptions,
    paths: Annotated[
        list[str], paths_argument("Model files, folders (searched for *.onnx) or quoted globs.")
    ],
    config_path: _ConfigOpt,
    out_dir: _OutDirOpt,
    jobs: _JobsOpt = None,
    data_map: _DataMapOpt = None,
    shard: _ShardOpt = None,
    executor: _ExecutorOpt = Executor.local,
    address: _AddressOpt = None,
    html: _HtmlOpt = False,
    markdown: _MarkdownOpt = False,
) -> None:
    """Compress many models with one config, in parallel worker processes.

    Writes OUT_DIR/<model>.<config>.onnx, OUT_DIR/<model>.report.json and
    OUT_DIR/summary.json; a model that fails does not stop the others.

    Example: mcompress batch models/ extra/*.onnx -c level1 -o compressed/ --jobs 2
    """
    cfg = with_cli_validation(config.load(config_path), opts)
    _check_executor(executor, address, jobs)
    part = Shard.parse(shard) if shard else None
    config_file = config.resolve_config_path(config_path)
    what = config_file.stem
    entries = batch_plan.load_data_map(data_map) if data_map else []
    models = batch_plan.discover(paths, skip_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    planned = batch_plan.plan(
        models,
        cfg,
        out_dir,
        what,
        force=opts.force,
        data_map=entries,
        documents=tuple(kind for kind, wanted in (("html", html), ("md", markdown)) if wanted),
        shard=part,
        config_file=config_file,
        data_map_file=data_map,
        summary_name=part.summary_name if part else "summary.json",
    )
    n_jobs = batch_plan.default_jobs([job.input_path for job in planned], jobs)
    of_shard = f" (shard {part.index}/{part.count} of {len(models)})" if part else ""
    on = f"{n_jobs} job(s)" if executor is Executor.local else f"Ray at {address or 'default'}"
    with _BatchDisplay(planned, quiet=opts.json_out) as display:
        display.log(
            f"mcompress batch: {len(planned)} model(s){of_shard}, {on}, "
            f"config {config_path} -> {out_dir}"
        )
        if executor is Executor.ray:
            outcome = batch_ray.run_batch(planned, display.event, address)
        else:
            outcome = batch_mod.run_batch(planned, n_jobs, display.event)
    positions = [job.index for job in planned]
    described = part.describe(positions, len(models)) if part else None
    data = batch_mod.summary(outcome, config_path, out_dir, shard=described)
    summary_name = part.summary_name if part else "summary.json"
    summary_path = batch_mod.write_summary(data, out_dir, opts.force, summary_name)
    render_batch.append_to_step_summary(data)
    if opts.json_out:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        wide_console().print(summary_table(outcome))
        out.print(f"summary: {summary_path}")
    if outcome.interrupted:
        err.print(
            f"mcompress: interrupted ({outcome.signal_name}); "
            "unfinished models were removed, summary written",
            markup=False,
            highlight=False,
        )
    raise typer.Exit(outcome.exit_code)


def _check_executor(executor: Executor, address: str | None, jobs: int | None) -> None:
    """Options that belong to the other executor are mistakes; Ray must be installed."""
    if executor is Executor.local:
        if address is not None:
            raise UsageError("--address is for --executor ray")
        return
    if jobs is not None:
        raise UsageError(
            "--jobs is for the local executor; Ray runs one task per model, "
            "sized by the model's memory estimate"
        )
    batch_ray.import_ray()


class _BatchDisplay:
    """Live progress on a terminal (overall bar plus one line per running model), plain log
    lines on stderr otherwise."""

    def __init__(self, jobs: list[batch_plan.Job], quiet: bool) -> None:
        self.jobs = {job.index: job for job in jobs}
        self.quiet = quiet
        self.live = not quiet and err.is_terminal
        self.finished = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.overall: TaskID | None = None
        self.running: dict[int, TaskID] = {}
        self.logged_start: set[int] = set()

    def __enter__(self) -> _BatchDisplay:
        if self.live:
            self.progress.start()
            self.overall = self.progress.add_task("all models", total=len(self.jobs))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def log(self, text: str) -> None:
        if not self.quiet:
            err.print(text, markup=False, highlight=False)

    def event(self, kind: str, index: int, payload: Any) -> None:
        """Listener for `batch.run_batch`: start / progress / done of one model, interrupted."""
        if kind == "interrupted":
            self.log("interrupted: stopping workers and removing unfinished outputs")
            return
        job = self.jobs[index]
        label = job.input_path.name
        if kind == "start":
            if self.live:
                self.running[index] = self.progress.add_task(f"  {label}", total=None)
            else:
                self._log_start(index)
        elif kind == "progress" and self.live and index in self.running:
            stage, done, total = payload
            self.progress.update(
                self.running[index],
                description=f"  {label}: {stage}",
                completed=done,
                total=total,
            )
        elif kind == "done":
            if not self.live:
                self._log_start(index)  # a retried or fast model's start may arrive late
            self.finished += 1
            if index in self.running:
                self.progress.remove_task(self.running.pop(index))
            if self.overall is not None:
                self.progress.update(self.overall, completed=self.finished)
            self.log(f"[{self.finished}/{len(self.jobs)}] {_row_line(payload)}")

    def _log_start(self, index: int) -> None:
        """One [start] line per model, always before its result."""
        if index not in self.logged_start:
            self.logged_start.add(index)
            self.log(f"[start] {self.jobs[index].input_path}")


def _row_line(row: batch_mod.Row) -> str:
    if row.error:
        return f"FAILED {row.model}: {row.error['message']} (exit {row.exit_code})"
    status = "ok" if row.status == "ok" else "GATE FAILED"
    metric = f", {render_batch.metric_text(row.metric)}" if row.metric else ""
    return (
        f"{status} {row.model}: {human_bytes(row.input_bytes)} -> "
        f"{human_bytes(row.output_bytes)} ({render_batch.ratio_text(row.ratio)}{metric}) "
        f"in {row.seconds:.1f}s"
    )


def summary_table(outcome: batch_mod.Outcome) -> Table:
    """One row per model: sizes, ratio, key metric, gates, status, seconds."""
    table = Table(title="mcompress batch", header_style="bold")
    for column in render_batch.COLUMNS:
        justify = "left" if column in ("model", "key metric", "gates", "status") else "right"
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    styles = {"ok": "green", "gate_failed": "yellow", "failed": "red", "interrupted": "red"}
    for row in outcome.rows:
        *first, status, seconds = render_batch.cells(asdict(row))
        table.add_row(*first, f"[{styles.get(row.status, 'white')}]{status}[/]", seconds)
    return table
