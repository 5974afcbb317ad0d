"""`mcompress validate ORIGINAL COMPRESSED`: compare any two models, whoever made them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mcompress import config, model_io, pipeline, validate
from mcompress.cli.common import (
    EXIT_CODES_HELP,
    InputShapeOpt,
    ProgressDisplay,
    WriteOptions,
    add_report_paths,
    app,
    emit,
    stage_reports,
    with_cli_validation,
)
from mcompress.outputs import Outputs
from mcompress.report import RunReport


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, show_default=False, **kw)


@app.command(name="validate", epilog=EXIT_CODES_HELP)
def validate_command(
    original: Annotated[Path, typer.Argument(help="The reference model.", show_default=False)],
    compressed: Annotated[Path, typer.Argument(help="The model to check.", show_default=False)],
    data: Annotated[
        Path | None, _opt("--data", help=".npz keyed by input names (+ 'labels'), or a folder.")
    ] = None,
    samples: Annotated[
        int | None, _opt("--samples", help="Samples (default: 32 random, or all data).")
    ] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seed for random inputs (default 0).")] = None,
    input_shape: InputShapeOpt = None,
    max_accuracy_drop: Annotated[
        float | None, _opt("--max-accuracy-drop", help="Gate: accuracy drop (needs labels).")
    ] = None,
    min_cosine: Annotated[
        float | None, _opt("--min-cosine", help="Gate: cosine similarity of every output.")
    ] = None,
    min_top1_agreement: Annotated[
        float | None,
        _opt("--min-top1-agreement", help="Floor: top-1 agreement (default 0.5 random, 0.9 data)."),
    ] = None,
    min_sqnr: Annotated[
        float | None, _opt("--min-sqnr", help="Floor: SQNR dB (default 1 random, 6 data).")
    ] = None,
    no_gates: Annotated[
        bool, typer.Option("--no-gates", help="Measure only: no gate fails, not even the floor.")
    ] = False,
    max_latency_ratio: Annotated[
        float | None, _opt("--max-latency-ratio", help="Gate: latency compressed/original.")
    ] = None,
    min_compression_ratio: Annotated[
        float | None, _opt("--min-compression-ratio", help="Gate: original size / compressed.")
    ] = None,
    report: Annotated[Path | None, _opt("--report", help="Write the JSON report here.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the JSON report to stdout and nothing else.")
    ] = False,
    markdown: Annotated[Path | None, _opt("--markdown", help="Write a Markdown report.")] = None,
    html: Annotated[Path | None, _opt("--html", help="Write a self-contained HTML report.")] = None,
) -> None:
    """Compare COMPRESSED against ORIGINAL on the same inputs; gate on the differences.

    Example: mcompress validate model.onnx model.int8.onnx --data val.npz --min-cosine 0.99
    """
    opts = WriteOptions(
        output=None,
        force=False,
        report=report,
        json_out=json_out,
        no_validate=False,
        data=data,
        samples=samples,
        seed=seed,
        input_shape=input_shape or [],
        max_accuracy_drop=max_accuracy_drop,
        min_cosine=min_cosine,
        min_top1_agreement=min_top1_agreement,
        max_latency_ratio=max_latency_ratio,
        min_compression_ratio=min_compression_ratio,
        min_sqnr=min_sqnr,
        no_gates=no_gates,
        markdown=markdown,
        html=html,
    )
    cfg = with_cli_validation(config.build({}), opts).validation
    with Outputs(force=False) as outs:
        for path in (original, compressed):
            outs.add_input(path, "input model")
            for data_file in _data_files(path):
                outs.add_input(data_file, "external data of an input model")
        outs.add_input(data, "--data file")
        add_report_paths(outs, opts)
        outs.check()
        result = compare(original, compressed, cfg, quiet=json_out)
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
        report.validation = validate.validate_pair(original, compressed, cfg, progress)
    report.gates = validate.evaluate_gates(cfg, report)
    report.seconds = time.perf_counter() - started
    return report
