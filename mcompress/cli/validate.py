"""`mcompress validate ORIGINAL COMPRESSED`: compare any two models, whoever made them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mcompress import config, model_io, pipeline, validate
from mcompress.cli.common import (
    EXIT_CODES_HELP,
    GATE_OPTIONS,
    REPORT_OPTIONS,
    ProgressDisplay,
    WriteOptions,
    add_report_paths,
    app,
    emit,
    shared_options,
    stage_reports,
    with_cli_validation,
)
from mcompress.outputs import Outputs
from mcompress.report import RunReport


@app.command(name="validate", epilog=EXIT_CODES_HELP)
@shared_options(
    "data", "samples", "seed", "input_shape", *GATE_OPTIONS, *REPORT_OPTIONS,
    help={"data": ".npz keyed by input names (+ 'labels'), or a folder."},
)  # fmt: skip
def validate_command(
    original: Annotated[Path, typer.Argument(help="The reference model.", show_default=False)],
    compressed: Annotated[Path, typer.Argument(help="The model to check.", show_default=False)],
    opts: WriteOptions,
) -> None:
    """Compare COMPRESSED against ORIGINAL on the same inputs; gate on the differences.

    Example: mcompress validate model.onnx model.int8.onnx --data val.npz --min-cosine 0.99
    """
    cfg = with_cli_validation(config.build({}), opts).validation
    with Outputs(force=False) as outs:
        for path in (original, compressed):
            outs.add_input(path, "input model")
            for data_file in _data_files(path):
                outs.add_input(data_file, "external data of an input model")
        outs.add_input(opts.data, "--data file")
        add_report_paths(outs, opts)
        outs.check()
        result = compare(original, compressed, cfg, quiet=opts.json_out)
        stage_reports(outs, result, opts)
        outs.commit()
    emit(result, opts)


def _data_files(model: Path) -> list[Path]:
    """The model's external data files; none when it cannot be read (`compare` says why)."""
    try:
        return model_io.data_files(model)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by compare
        return []


def compare(
    original: Path, compressed: Path, cfg: config.ValidateConfig, quiet: bool = False
) -> RunReport:
    """Validate `compressed` against `original` and evaluate the gates; a RunReport."""
    started = time.perf_counter()
    before, after = pipeline.file_info(original), pipeline.file_info(compressed)
    report = RunReport(command="validate", input=before, output=after)
    report.compression_ratio = before.size_bytes / max(after.size_bytes, 1)
    with ProgressDisplay(quiet=quiet) as progress:
        report.validation = validate.validate_pair(
            original, compressed, cfg, progress, before.size_bytes + after.size_bytes
        )
    report.gates = validate.evaluate_gates(cfg, report)
    report.seconds = time.perf_counter() - started
    return report
