"""Run a pipeline: load, prepare, check every pass, apply them in order, pack, save, validate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcompress import encoding, model_io, validate
from mcompress.analysis import count_parameters
from mcompress.config import PipelineConfig
from mcompress.passes import PASSES
from mcompress.passes.base import PassContext
from mcompress.prepare import prepare
from mcompress.report import FileInfo, PassRecord, RunReport

Progress = Callable[[str, int, int], None]


@dataclass
class RunOptions:
    """Where to read and write, and what the CLI adds to the config."""

    input_path: Path
    output: Path
    force: bool = False
    command: str = "run"
    progress: Progress = lambda label, done, total: None


def file_info(path: Path, parameters: int | None = None) -> FileInfo:
    """Size, gzip size and parameter count of a model file."""
    if parameters is None:
        parameters = count_parameters(model_io.load_model(path).proto)
    return FileInfo(
        path=str(path),
        size_bytes=model_io.disk_size(path),
        gzip_bytes=model_io.gzip_size(path),
        parameters=parameters,
    )


def run(cfg: PipelineConfig, opts: RunOptions) -> RunReport:
    """Compress `opts.input_path` with `cfg`; the report records every step and measurement."""
    started = time.perf_counter()
    model_io.check_output_path(opts.input_path, opts.output, opts.force)
    model = model_io.load_model(opts.input_path)
    restored = encoding.unpack(model) if cfg.passes else 0
    if restored:
        model.notes.append(f"expanded {restored} packed weights of the input before compressing")
    report = RunReport(
        command=opts.command,
        input=file_info(opts.input_path, count_parameters(model.proto)),
    )
    ctx = PassContext(
        input_path=opts.input_path,
        data=Path(cfg.validation.data) if cfg.validation.data else None,
        input_shapes={k: tuple(v) for k, v in cfg.validation.input_shapes.items()},
        seed=cfg.validation.seed,
        progress=opts.progress,
    )
    for pass_cfg in cfg.passes:
        PASSES[pass_cfg.type].check(model, pass_cfg)
    if cfg.prepare and cfg.passes:
        report.prepare = prepare(model)
    for pass_cfg in cfg.passes:
        report.passes.append(_apply(model, pass_cfg, ctx))
    parameters = count_parameters(model.proto)
    report.packing = encoding.pack(model)
    report.notes.extend(model.notes)
    report.notes.extend(note for record in report.passes for note in record.notes)
    report.notes.extend(model_io.save_model(model, opts.output))
    report.output = file_info(opts.output, parameters)
    report.compression_ratio = report.input.size_bytes / max(report.output.size_bytes, 1)
    if cfg.validation.enabled:
        report.validation = validate.validate_pair(
            opts.input_path, opts.output, cfg.validation, opts.progress
        )
    report.gates = validate.evaluate_gates(cfg.validation, report)
    report.seconds = time.perf_counter() - started
    return report


def _apply(model: model_io.Model, pass_cfg: Any, ctx: PassContext) -> PassRecord:
    start = time.perf_counter()
    result = PASSES[pass_cfg.type].apply(model, pass_cfg, ctx)
    return PassRecord(
        type=pass_cfg.type,
        seconds=round(time.perf_counter() - start, 4),
        modified=result.modified,
        stats=result.stats,
        notes=result.notes,
    )
