"""The Typer app and what every command shares: write options, progress, report output."""

from __future__ import annotations

import copy
import inspect as pyinspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from mcompress import __version__, config, model_io, pipeline
from mcompress.cli.commands import LazyGroup
from mcompress.errors import EXIT_GATE_FAILED, McompressError
from mcompress.outputs import Outputs
from mcompress.render_terminal import summary_table
from mcompress.report import RunReport, verdict

EXIT_CODES_HELP = (
    "Exit codes: 0 success · 1 internal error (traceback saved to a log file) · "
    "2 bad input (usage, config, unreadable model or data) · 3 a quality gate failed "
    "(model and report still written) · 130 / 143 interrupted (Ctrl-C / SIGTERM)."
)


class PlainUsageCommand(TyperCommand):
    """A command whose usage line names arguments as click does (`MODEL`, `PATHS...`), not as
    typer 0.29 does (`{MODEL}`, `{PATHS...}...`, lower-case names without a metavar)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        plain = [piece.replace("{", "").replace("}", "").upper() for piece in pieces]
        return [piece.replace("......", "...") for piece in plain]


class App(typer.Typer):
    """The Typer app; every command it registers uses PlainUsageCommand."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", PlainUsageCommand)
        return super().command(*args, **kwargs)


app = App(
    name="mcompress",
    cls=LazyGroup,
    help=(
        "Make ONNX models smaller and faster without silently breaking them.\n\n"
        "Examples:\n\n"
        "  mcompress quantize model.onnx            # int8, writes model.int8.onnx\n\n"
        "  mcompress run model.onnx -c level2 --data val.npz --max-accuracy-drop 0.01\n\n"
        "  mcompress inspect model.onnx --json\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    suggest_commands=False,  # LazyGroup suggests from every command, loaded or not
    context_settings={"help_option_names": ["-h", "--help"]},
)
LazyGroup.app = app
# Off a terminal (CI logs, pipes) rich assumes 80 columns and cuts table cells with "...": layer
# names a user copies into `exclude:` must come out whole, so such output is never narrowed.
WIDE = 1000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, soft_wrap=stderr)
    return Console(stderr=stderr, soft_wrap=stderr, width=WIDE)


out = _console(stderr=False)
err = _console(stderr=True)
# Without a terminal, long work logs a plain progress line at most this often (per stage).
PROGRESS_EVERY_S = 10.0


def _version(value: bool) -> None:
    if value:
        out.print(f"mcompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    """Make ONNX models smaller and faster without silently breaking them."""


# ---------------------------------------------------------------- shared options


@dataclass
class WriteOptions:
    """The shared options a command was given; those it does not take keep these defaults."""

    output: Path | None = None
    force: bool = False
    report: Path | None = None
    json_out: bool = False
    markdown: Path | None = None
    html: Path | None = None
    no_validate: bool = False
    data: Path | None = None
    samples: int | None = None
    seed: int | None = None
    input_shape: list[str] = field(default_factory=list)
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    max_latency_ratio: float | None = None
    min_compression_ratio: float | None = None
    min_sqnr: float | None = None
    no_gates: bool = False


def config_option(config: type[BaseModel], field: str, *flags: str, **kw: Any) -> Any:
    """A command-line option documented once, by the Config field it sets: its help is the
    field's description, its default the field's default (shown, never typed again), a choice
    lists its values as the metavar, and a bad value is reported under the option's name."""
    info = config.model_fields[field]
    text = kw.pop("help", None) or info.description or ""
    metavar = kw.pop("metavar", None) or _metavar(info.annotation)
    if text.split(" ")[0].strip(":,") not in (metavar or "").split("|"):  # a value stays as is
        text = text[:1].upper() + text[1:]
    text += "" if text.endswith(".") else "."
    shown = _default_text(info.get_default(call_default_factory=True), flags)
    if shown:
        text += f"  [default: {shown}]"
    option = typer.Option(*flags, help=text, metavar=metavar, show_default=False, **kw)
    option.config_field = field  # read by `writes_model` to name the option in errors
    return option


def _default_text(value: Any, flags: tuple[str, ...]) -> str:
    if value is None or value == () or (isinstance(value, bool) and "/" not in flags[0]):
        return ""
    if isinstance(value, bool):
        on, off = flags[0].split("/")
        return on if value else off
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


def _metavar(annotation: Any) -> str | None:
    """TEXT, N, NUMBER or the choices (a|b|c) for a Config field's type; None for flags."""
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    kind = args[0] if len(args) == 1 else annotation
    if get_origin(kind) is Literal:
        return "|".join(str(a) for a in get_args(kind))
    names = {bool: None, int: "N", float: "NUMBER"}
    return names.get(kind, "TEXT") if isinstance(kind, type) else "TEXT"


def option_flags(fn: Callable[..., Any]) -> dict[str, str]:
    """Config field -> the long option that sets it, for the options of command `fn`."""
    flags = {}
    for hint in get_type_hints(fn, include_extras=True).values():
        for meta in getattr(hint, "__metadata__", ()):
            field = getattr(meta, "config_field", None)
            if field:
                # typer.Option's first argument (stored as the default) is the first flag
                decls = [meta.default, *meta.param_decls]
                flags[field] = next(d for d in decls if str(d).startswith("--")).split("/")[0]
    return flags


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, **kw)


def _validation_option(field: str) -> Any:
    """The option setting `validate.<field>`: the field's name with dashes (--min-cosine)."""
    return config_option(config.ValidateConfig, field, "--" + field.replace("_", "-"))


# Gates and floors of the `validate:` section a command line may set.
GATE_FIELDS = (
    "max_accuracy_drop", "min_cosine", "min_top1_agreement", "max_latency_ratio",
    "min_compression_ratio", "min_sqnr",
)  # fmt: skip
# Every option commands share: name -> (type, declaration); the default is WriteOptions'.
OPTIONS: dict[str, tuple[Any, Any]] = {
    "output": (
        Path | None,
        _opt("-o", "--output", metavar="PATH", help="Output model (default: next to input)."),
    ),
    "force": (bool, _opt("--force", help="Overwrite an existing output file.")),
    "report": (
        Path | None,
        _opt("--report", metavar="PATH", help="Write the JSON report to this file."),
    ),
    "json_out": (bool, _opt("--json", help="Print the JSON report to stdout and nothing else.")),
    "markdown": (
        Path | None,
        _opt("--markdown", metavar="PATH", help="Write a Markdown report to this file."),
    ),
    "html": (
        Path | None,
        _opt("--html", metavar="PATH", help="Write a self-contained HTML report."),
    ),
    "no_validate": (bool, _opt("--no-validate", help="Skip validation against the original.")),
    "data": (
        Path | None,
        _opt("--data", metavar="PATH", help="Validation/calibration .npz (or folder)."),
    ),
    "samples": (int | None, _validation_option("samples")),
    "seed": (int | None, _validation_option("seed")),
    "input_shape": (
        list[str],
        _opt(
            "--input-shape",
            metavar="NAME=SHAPE",
            help="Pin a dynamic input shape: name=1x3x48x192 (repeatable).",
        ),
    ),
    **{gate: (float | None, _validation_option(gate)) for gate in GATE_FIELDS},
    "no_gates": (
        bool,
        _opt("--no-gates", help="Measure only: no gate fails, not even the fidelity floor."),
    ),
}
REPORT_OPTIONS = ("report", "json_out", "markdown", "html")
GATE_OPTIONS = (*GATE_FIELDS, "no_gates")


def shared_options(
    *names: str, help: dict[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give command `fn` the named options of OPTIONS, passed to it as `opts: WriteOptions`;
    `help` replaces an option's text where the command gives it another meaning."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _with_options(fn, names, lambda kwargs, opts: fn(**kwargs, opts=opts), help or {})

    return decorate


def _with_options(
    fn: Callable[..., Any],
    names: tuple[str, ...],
    body: Callable[[dict[str, Any], WriteOptions], Any],
    help: dict[str, str],
) -> Callable[..., Any]:
    """A command with `fn`'s own parameters (but `opts`), docstring and name, plus the shared
    options `names`; calling it runs `body(own arguments, WriteOptions)`."""
    hints = get_type_hints(fn, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in pyinspect.signature(fn).parameters.values()
        if p.name != "opts"
    ]
    defaults = WriteOptions()
    shared = []
    for name in names:
        kind, option = OPTIONS[name]
        if name in help:
            option = copy.copy(option)
            option.help = help[name]
        shared.append(
            pyinspect.Parameter(
                name,
                pyinspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[kind, option],
                default=getattr(defaults, name),
            )
        )

    def command(**kwargs: Any) -> Any:
        opts = WriteOptions(**{name: kwargs.pop(name) for name in names})
        return body(kwargs, opts)

    command.__signature__ = pyinspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    command.__doc__ = fn.__doc__
    command.__name__ = fn.__name__
    return command


def writes_model(
    what: str | Callable[[dict[str, Any]], str], pass_type: str | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """Register a model-writing command: `fn` returns pass options; shared options are added.

    `what` names the default output (`model.<what>.onnx`) or computes it from the pass options.
    With `pass_type`, `fn` returns that pass's options and a one-pass pipeline runs; without,
    `fn` returns a full PipelineConfig.
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        def body(kwargs: dict[str, Any], opts: WriteOptions) -> None:
            model_path: Path = kwargs["model"]
            config_file = kwargs.get("config_path")
            produced = fn(**kwargs)
            if pass_type is not None:
                options = {k: v for k, v in produced.items() if v is not None}
                flags = {f"passes.0.{k}": v for k, v in option_flags(fn).items()}
                cfg = config.build({"passes": [{"type": pass_type, **options}]}, flags=flags)
                name = what(options) if callable(what) else what
            else:
                cfg = produced
                name = what if isinstance(what, str) else what({})
            cfg = with_cli_validation(cfg, opts)
            if config_file is not None:
                config_file = config.resolve_config_path(config_file)
            _execute(cfg, model_path, opts, name, fn.__name__, config_file, kwargs.get("original"))

        command = _with_options(fn, tuple(OPTIONS), body, {})
        return app.command(name=fn.__name__.replace("_", "-"), epilog=EXIT_CODES_HELP)(command)

    return decorate


def with_cli_validation(cfg: config.PipelineConfig, opts: WriteOptions) -> config.PipelineConfig:
    """CLI flags override the config's `validate:` section."""
    overrides: dict[str, Any] = {
        key: getattr(opts, key)
        for key in ("samples", "seed", *GATE_FIELDS)
        if getattr(opts, key) is not None
    }
    if opts.no_gates:
        overrides["gates"] = False
    if opts.data is not None:
        overrides["data"] = str(opts.data)
    if opts.no_validate:
        overrides["enabled"] = False
    if opts.input_shape:
        overrides["input_shapes"] = dict(parse_shape(s) for s in opts.input_shape)
    return override_validation(cfg, overrides)


def override_validation(
    cfg: config.PipelineConfig, overrides: dict[str, Any]
) -> config.PipelineConfig:
    """`overrides` replace the config's `validate:` settings; a gate given on the command line
    is required, never skipped as optional."""
    if not overrides:
        return cfg
    validate = {**cfg.validation.model_dump(exclude_unset=True), **overrides}
    validate["optional_gates"] = [g for g in cfg.validation.optional_gates if g not in overrides]
    merged = cfg.model_dump(by_alias=True, exclude_unset=True)
    merged["validate"] = validate
    flags = {f"validate.{k}": "--" + k.replace("_", "-") for k in overrides if k in _VALIDATE_KEYS}
    return config.build(merged, flags=flags)


# Validation settings whose command-line option is the key with dashes (--samples, --min-cosine).
_VALIDATE_KEYS = {"samples", "seed", "data", *GATE_FIELDS}


def parse_shape(text: str) -> tuple[str, list[int]]:
    """`name=1x3x224x224` as (name, dims); every dim at least 1, fewer than 2^31 elements."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        values = [int(d) for d in dims.lower().split("x")]
    except ValueError:
        raise McompressError(
            f"--input-shape '{text}' is not of the form name=1x3x224x224"
        ) from None
    problem = config.shape_problem(text, values)
    if problem:
        raise McompressError(f"--input-shape {problem}")
    return name, values


def _execute(
    cfg: config.PipelineConfig,
    model: Path,
    opts: WriteOptions,
    what: str,
    command: str,
    config_file: Path | None,
    original: Path | None = None,
) -> None:
    """Run the pipeline and write the model and reports; `original` (distill) is the model
    validated against when it is not `model`."""
    output = opts.output or model_io.default_output(model, what)
    with Outputs(opts.force) as outs:
        outs.add(output, "-o", replaces_model=True)
        add_report_paths(outs, opts)
        outs.add_input(config_file, "config file")
        with ProgressDisplay(quiet=opts.json_out) as progress:
            report = pipeline.run(
                cfg,
                pipeline.RunOptions(
                    input_path=model,
                    output=output,
                    outputs=outs,
                    command=command,
                    progress=progress,
                    original=original,
                ),
            )
        stage_reports(outs, report, opts)
        outs.commit()
    emit(report, opts)


def add_report_paths(outs: Outputs, opts: WriteOptions) -> None:
    """The report files requested on the command line, as planned outputs."""
    outs.add(opts.report, "--report")
    outs.add(opts.markdown, "--markdown")
    outs.add(opts.html, "--html")


def stage_reports(outs: Outputs, report: RunReport, opts: WriteOptions) -> None:
    """Write the requested report files into the staging folder (claimed with the model)."""
    if opts.report:
        outs.write_text(opts.report, report.to_json())
    if not (opts.markdown or opts.html):
        return
    from mcompress import render

    if opts.markdown:
        outs.write_text(opts.markdown, render.to_markdown(report))
    if opts.html:
        outs.write_text(opts.html, render.to_html(report))


def emit(report: RunReport, opts: WriteOptions) -> None:
    """Print the summary (or JSON) ending with the output's path and the verdict, append to
    GITHUB_STEP_SUMMARY; exit 3 on a failed gate, saying truthfully what was written."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        from mcompress import render

        with open(summary, "a", encoding="utf-8") as f:
            f.write(render.to_markdown(report) + "\n")
    line = verdict(report)
    if opts.json_out:
        sys.stdout.write(report.to_json() + "\n")
    else:
        out.print(summary_table(report))
        for note in report.notes:
            warning = note.startswith("warning: ")
            out.print(note if warning else f"note: {note}", markup=False, highlight=False)
        label = "checked" if report.command == "validate" else "output"
        if report.output:
            out.print(f"{label}: {Path(report.output.path).resolve()}", soft_wrap=True)
        color = "green" if report.passed else "red"
        out.print(f"[{color}]{escape(line)}[/{color}]", soft_wrap=True)
    if not report.passed:
        err.print(f"mcompress: {escape(line)} ({_written(report, opts)})", soft_wrap=True)
        raise typer.Exit(EXIT_GATE_FAILED)


def _written(report: RunReport, opts: WriteOptions) -> str:
    """What a run that failed a gate left behind, for its error line."""
    files = [str(p) for p in (opts.report, opts.markdown, opts.html) if p]
    reports = f"report written to {', '.join(files)}" if files else "no report file requested"
    if report.command == "validate" or report.output is None:
        return reports
    return f"model written to {report.output.path}; {reports}"


class ProgressDisplay:
    """Progress on stderr; the pipeline reports (label, done, total). A rich bar on a
    terminal; otherwise (CI logs) a plain line per stage every PROGRESS_EVERY_S seconds once
    it has run that long, and a last line when such a stage finishes: nothing for quick work."""

    def __init__(self, quiet: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.plain = not quiet and not err.is_terminal
        self.quiet = quiet or self.plain
        self.clock = clock
        self.stages: dict[str, list[float]] = {}  # label -> [started, last line, lines]
        self.bar = None if self.quiet else _progress_bar()
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Callable[[str, int, int], None]:
        if self.bar is not None:
            self.bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, label: str, done: int, total: int) -> None:
        if self.plain:
            self._line(label, done, total)
        if self.bar is None:
            return
        if label not in self.tasks:
            self.tasks[label] = self.bar.add_task(label, total=total)
        self.bar.update(self.tasks[label], completed=done, total=total)

    def _line(self, label: str, done: int, total: int) -> None:
        now = self.clock()
        started, last, lines = self.stages.setdefault(label, [now, now, 0])
        finished = total > 0 and done >= total
        if now - last < PROGRESS_EVERY_S and not (finished and lines):
            return
        if finished and lines < 0:
            return
        share = f" ({done / total:.0%})" if total > 0 else ""
        err.print(
            f"[progress] {label}: {done}/{total}{share}, {now - started:.0f} s",
            markup=False,
            highlight=False,
        )
        self.stages[label] = [started, now, -1 if finished else lines + 1]


def _progress_bar() -> Any:
    """rich's progress bar on stderr, imported only for a terminal (a CI log gets lines)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        metavar="PATTERN",
        help="Node name glob, op type or weight name (repeatable).",
    ),
]
InputShapeOpt = Annotated[list[str] | None, OPTIONS["input_shape"][1]]
CalibrationOpt = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        metavar="PATH|random",
        help="Calibration inputs (.npz keyed by input names, a folder, or 'random'): turns on "
        "recovery, layer-wise reconstruction against the original.",
    ),
]
RecoverOpt = Annotated[
    bool | None,
    typer.Option("--recover/--no-recover", help="Recovery when calibration data is given (on)."),
]
ModelArg = Annotated[
    Path, typer.Argument(help="Input ONNX model.", show_default=False, metavar="MODEL")
]


def wide_console() -> Console:
    """stdout for tables: off a terminal (CI logs) rich would assume 80 columns and wrap."""
    return out if out.is_terminal else Console(width=WIDE)
