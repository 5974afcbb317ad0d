"""Run a pipeline: load, prepare, check every pass, apply them in order, pack, save, validate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from mcompress import branch_local, encoding, gzipped, model_io, runtime, spill, validate
from mcompress.analysis import count_parameters
from mcompress.config import PipelineConfig
from mcompress.errors import DataError, GateError, McompressError, ModelError, NothingToDo
from mcompress.inputs import make_feeds
from mcompress.inputs.facts import graph_inputs
from mcompress.inputs.shapes import pinned_dims
from mcompress.outputs import Outputs
from mcompress.passes import PASSES
from mcompress.passes.base import PassContext, apply_pass, check_pass, unmatched_patterns
from mcompress.prepare import prepare, reject_nan_weights
from mcompress.report import FileInfo, PassRecord, RunReport

if TYPE_CHECKING:  # a budget search's modules are imported when a config has `search:`
    from mcompress import budget
    from mcompress.pass_cache import PassCache

Progress = Callable[[str, int, int], None]


@dataclass
class RunOptions:
    """Where to read and write, and what the CLI adds to the config."""

    input_path: Path
    output: Path
    # The caller's plan of outputs (-o, reports), claimed by the caller; without one, the
    # pipeline plans and claims the model alone.
    outputs: Outputs | None = None
    force: bool = False
    command: str = "run"
    progress: Progress = lambda label, done, total: None
    # The model the output is validated against and reported as the input, when that is not
    # `input_path` (`mcompress distill ORIGINAL COMPRESSED`).
    original: Path | None = None
    # Models after pass prefixes already run on this input (a budget search and its final run).
    cache: PassCache | None = None
    # The input model and data files were checked by an earlier run (a search's later trials).
    checked: bool = False


def file_info(path: Path) -> FileInfo:
    """Size, gzip size and parameter count of a model file (parsed once for all three)."""
    model = model_io.load_model(path)
    files = model_io.external_files(model.proto, model.base_dir)
    return _measure(path, files, count_parameters(model.proto))


def _measure(
    path: Path, files: list[Path], parameters: int, gzip_bytes: int | None = None
) -> FileInfo:
    """A model file's sizes on disk; its gzip size is computed unless given."""
    size = model_io.disk_size(path, files)
    return FileInfo(
        path=str(path),
        size_bytes=size,
        gzip_bytes=gzipped.gzip_size(path, files) if gzip_bytes is None else gzip_bytes,
        parameters=parameters,
        gzip_estimated=gzipped.gzip_estimated(size),
    )


def run(cfg: PipelineConfig, opts: RunOptions) -> RunReport:
    """Compress `opts.input_path` with `cfg`; the report records every step and measurement.

    Every output is checked against every input before any pass runs. The model is saved into
    `opts.outputs`' staging folder and validated there against the untouched original; the
    caller claims it (`Outputs.commit`). The input's gzip size (seconds of CPU on a large
    model) is computed on a thread while the passes run, and is finished before validation so
    that it cannot skew latency.
    """
    if opts.outputs is None:
        with Outputs(opts.force) as outs:
            outs.add(opts.output, "-o", replaces_model=True)
            report = run(cfg, dataclasses.replace(opts, outputs=outs))
            outs.commit()
        return report
    started = time.perf_counter()
    cfg, judged_on = judged_on_calibration(cfg)
    searched = None
    if cfg.search is not None:
        from mcompress import budget, layer_search
        from mcompress.pass_cache import PassCache

        opts = dataclasses.replace(opts, cache=opts.cache or PassCache())
        cfg, searched = budget.search(
            cfg, opts.input_path, trial_runner(opts), _trial_progress(cfg, opts),
            refine=layer_search.preset_stage(cfg),
        )  # fmt: skip
    model = model_io.load_model(opts.input_path)
    input_files = model_io.external_files(model.proto, model.base_dir)
    with (
        gzipped.gzip_size_started(opts.input_path, input_files) as input_gzip,
        spill.spilling(model.had_external_data),
    ):
        restored = encoding.unpack(model) if cfg.passes else 0
        if restored:
            model.notes.append(
                f"expanded {restored} packed weights of the input before compressing"
            )
        _plan(cfg, opts, model, input_files)
        if not opts.checked:
            _check_inputs(cfg, opts, model)
        report = RunReport(
            command=opts.command,
            # gzip_bytes is set below, once the thread is done
            input=_measure(opts.input_path, input_files, count_parameters(model.proto), 0),
        )
        _compress(cfg, opts, model, report)
        if judged_on:
            report.notes.append(judged_on)
        report.input.gzip_bytes = input_gzip.result()
    staged = model.path
    del model  # written: validation's processes need the memory more than this copy
    if opts.original is not None and report.output is not None:
        report.input = file_info(opts.original)
        report.compression_ratio = report.input.size_bytes / max(report.output.size_bytes, 1)
    if cfg.validation.enabled:
        sizes = report.input.size_bytes + report.output.size_bytes if report.output else None
        report.validation = _validate(cfg, opts, staged, sizes)
    if searched is not None:
        report.search = searched
        report.notes.extend(searched["notes"])
    report.gates = validate.evaluate_gates(cfg.validation, report)
    report.seconds = time.perf_counter() - started
    return report


def judged_on_calibration(cfg: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """Without `--data`, validation (and a preset's search) judges on the first pass's real
    calibration data rather than on random inputs, with a note saying so: random inputs miss
    breaks that real data shows (a CRNN proxy kept 79% top-1 agreement on random images
    with 0 of its real lines read right)."""
    if not cfg.validation.enabled or cfg.validation.data:
        return cfg, None
    for pass_cfg in cfg.passes:
        calibration = getattr(pass_cfg, "calibration", None)
        if calibration not in (None, "random"):
            validation = cfg.validation.model_copy(update={"data": str(calibration)})
            note = (
                f"validated on the calibration data {calibration} (no --data given; recovery "
                "fitted on these samples, so pass held-out --data for unbiased figures)"
            )
            return cfg.model_copy(update={"validate_": validation}), note
    return cfg, None


def _validate(
    cfg: PipelineConfig, opts: RunOptions, staged: Path, disk_bytes: int | None
) -> validate.Validation | None:
    """Validate the staged output against the untouched input (`disk_bytes`: both models'
    sizes on disk, when measured). When validation fails, the error names the output as the
    user does and says whether it was written: a model onnxruntime crashes on is kept (exit 3,
    like a failed gate), any other failure leaves no output behind."""
    try:
        reference = opts.original or opts.input_path
        return validate.validate_pair(reference, staged, cfg.validation, opts.progress, disk_bytes)
    except McompressError as exc:
        exc.message = exc.message.replace(str(staged), str(opts.output))
        if isinstance(exc, GateError) and opts.outputs is not None:
            opts.outputs.commit()
        else:
            exc.message += f"; '{opts.output}' was not written"
        raise


def _plan(
    cfg: PipelineConfig, opts: RunOptions, model: model_io.Model, input_files: list[Path]
) -> None:
    """Add the run's inputs and the output's data file to `opts.outputs`, then check them all."""
    outs = opts.outputs
    assert outs is not None
    outs.add_input(opts.input_path, "input model")
    outs.add_input(opts.original, "original model")
    for path in input_files:
        outs.add_input(path, "external data of the input model")
    outs.add_input(cfg.validation.data, "--data file")
    for pass_cfg in cfg.passes:
        calibration = getattr(pass_cfg, "calibration", None)
        if calibration not in (None, "random"):
            outs.add_input(calibration, "calibration data")
        outs.add_input(getattr(pass_cfg, "teacher", None), "teacher model")
    data_file = model_io.data_path(opts.output)
    outs.add(data_file, "the external data of -o", exists_ok=not model_io.saves_external(model))
    outs.check()


def _trial_progress(cfg: PipelineConfig, opts: RunOptions) -> budget.OnTrial:
    """Progress of a budget search: one step per trial (a search runs for minutes)."""
    from mcompress import budget

    planned = budget.planned_trials(cfg)
    done = 0

    def on_trial(trial: budget.Trial) -> None:
        nonlocal done
        done += 1
        opts.progress("search", done, max(planned, done))

    return on_trial


def trial_runner(opts: RunOptions) -> budget.Compress:
    """How a budget search compresses a candidate: this pipeline, into a scratch file. The
    input model and data files are checked once, by the first trial (each check read every
    data file: ~0.4 s a trial on the classifier's 44 MB of crops)."""
    checked = False

    def compress(cfg: PipelineConfig, output: Path) -> RunReport:
        nonlocal checked
        trial = RunOptions(
            opts.input_path, output, force=True, command=opts.command, cache=opts.cache,
            checked=checked,
        )  # fmt: skip
        report = run(cfg, trial)
        checked = True
        return report

    return compress


def _check_inputs(cfg: PipelineConfig, opts: RunOptions, model: model_io.Model) -> None:
    """Fail before any pass runs when onnxruntime cannot load the input model (a session
    from the file, graph optimizations off: no seconds added on a large model) or when the
    `--data` file or a pass's calibration data does not fit its inputs."""
    try:
        runtime.session(opts.input_path, optimize=False)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        if not _lowered_on_save(model):
            raise ModelError(
                f"the input model does not run in onnxruntime: {runtime.error_line(exc)}"
            ) from None
    shapes = {k: tuple(v) for k, v in cfg.validation.input_shapes.items()}
    pinned_dims(graph_inputs(model.proto), shapes)
    calibrations: set[str] = {
        c for p in cfg.passes if (c := getattr(p, "calibration", None)) not in (None, "random")
    }
    if cfg.validation.data and cfg.validation.data not in calibrations:
        _check_data(model, Path(cfg.validation.data), cfg.validation.seed, shapes)
    for calibration in sorted(calibrations):
        try:
            _check_data(model, Path(calibration), cfg.validation.seed, shapes)
        except DataError as exc:  # its messages start "data ..."
            exc.message = f"calibration {exc.message}"
            raise


def _check_data(
    model: model_io.Model, data: Path, seed: int, shapes: dict[str, tuple[int, ...]]
) -> None:
    """Read one sample of `data` for `model`: DataError when it does not fit."""
    make_feeds(model, data=data, samples=1, seed=seed, input_shapes=shapes)


def _lowered_on_save(model: model_io.Model) -> bool:
    """An IR version newer than onnxruntime's but known to onnx: the save lowers it."""
    return model_io.max_ir_version() < model.proto.ir_version <= onnx.IR_VERSION


def _compress(
    cfg: PipelineConfig, opts: RunOptions, model: model_io.Model, report: RunReport
) -> None:
    """Check, prepare, apply the passes, pack and save; record each step in `report`."""
    ctx = PassContext(
        input_path=opts.input_path,
        data=Path(cfg.validation.data) if cfg.validation.data else None,
        input_shapes={k: tuple(v) for k, v in cfg.validation.input_shapes.items()},
        seed=cfg.validation.seed,
        progress=opts.progress,
    )
    skipped = _check_all(cfg, model)
    if cfg.prepare and cfg.passes:
        report.prepare = prepare(model)
    if cfg.passes:
        reject_nan_weights(model)
    done = opts.cache.resume(opts.input_path, cfg, model, report) if opts.cache else 0
    if done:
        report.notes.append(f"search: the first {done} passes ran in a trial; their model reused")
    for index, pass_cfg in enumerate(cfg.passes[done:], done):
        if index in skipped:
            note = f"{pass_cfg.type} skipped: {skipped[index]}"
            report.passes.append(PassRecord(pass_cfg.type, 0.0, False, {"skipped": True}, [note]))
        else:
            report.passes.append(_apply(model, pass_cfg, ctx))
        if opts.cache is not None:
            opts.cache.store(opts.input_path, cfg, index + 1, model, report)
    parameters = count_parameters(model.proto)
    report.packing = encoding.pack(model)
    branch_local.localize(model.proto)
    report.notes.extend(model.notes)
    report.notes.extend(note for record in report.passes for note in record.notes)
    assert opts.outputs is not None
    with opts.outputs.writing(opts.output) as staged:
        report.notes.extend(model_io.save_model(model, staged))
        # the external data file, if any, was written beside it: claimed with it
        opts.outputs.staged(model_io.data_path(opts.output))
        # Once saved, the proto points at exactly the data files written next to the output.
        files = model_io.external_files(model.proto, model.base_dir)
        report.output = _measure(staged, files, parameters)
    report.output.path = str(opts.output)
    report.compression_ratio = report.input.size_bytes / max(report.output.size_bytes, 1)


def _check_all(cfg: PipelineConfig, model: model_io.Model) -> dict[int, str]:
    """Every pass checks the model before any work; in a pipeline of several passes, one that
    has nothing to do here is skipped ({index: why}) while the others run."""
    skipped: dict[int, str] = {}
    for index, pass_cfg in enumerate(cfg.passes):
        try:
            check_pass(PASSES[pass_cfg.type], model, pass_cfg)
        except NothingToDo as exc:
            if len(cfg.passes) == 1:
                raise
            skipped[index] = exc.message
    if cfg.passes and len(skipped) == len(cfg.passes):
        raise NothingToDo("nothing to do: " + "; ".join(skipped.values()))
    for pass_cfg in cfg.passes:
        for pattern in unmatched_patterns(model, getattr(pass_cfg, "exclude", ())):
            model.notes.append(
                f"warning: {pass_cfg.type} exclude pattern '{pattern}' matches no node name, "
                "op type or weight name; it keeps nothing in float"
            )
    return skipped


def _apply(model: model_io.Model, pass_cfg: Any, ctx: PassContext) -> PassRecord:
    start = time.perf_counter()
    result = apply_pass(PASSES[pass_cfg.type], model, pass_cfg, ctx)
    return PassRecord(
        type=pass_cfg.type,
        seconds=round(time.perf_counter() - start, 4),
        modified=result.modified,
        stats=result.stats,
        notes=result.notes,
    )
