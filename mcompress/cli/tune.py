"""`mcompress tune`: search the smallest model within a budget; write it and its pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mcompress import budget, layer_search, model_io, pipeline
from mcompress import tune as tuning
from mcompress.cli.common import (
    EXIT_CODES_HELP,
    REPORT_OPTIONS,
    ModelArg,
    ProgressDisplay,
    WriteOptions,
    add_report_paths,
    app,
    emit,
    err,
    shared_options,
    stage_reports,
    with_cli_validation,
)
from mcompress.errors import UsageError
from mcompress.outputs import Outputs


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, show_default=False, **kw)


# The gates `tune` takes are its budget: the search keeps the candidates that pass them.
_BUDGET_HELP = {
    "data": "Validation .npz (with 'labels' for the accuracy budget).",
    "max_accuracy_drop": "Budget: accuracy drop (needs labels).",
    "min_sqnr": "Budget without labels: SQNR dB of every output.",
    "min_top1_agreement": "Budget: top-1 agreement.",
}


@app.command(epilog=EXIT_CODES_HELP)
@shared_options(
    "data", "max_accuracy_drop", "min_sqnr", "min_top1_agreement", "output", "force", "samples",
    "seed", "input_shape", *REPORT_OPTIONS, help=_BUDGET_HELP,
)  # fmt: skip
def tune(
    model: ModelArg,
    opts: WriteOptions,
    calibration: Annotated[
        str | None, _opt("--calibration", help="Calibration .npz for passes that recover with it.")
    ] = None,
    objective: Annotated[
        str, _opt("--objective", help="What to minimise within the budget: size or latency.")
    ] = "size",
    time_budget: Annotated[
        str | None, _opt("--time-budget", help="Stop searching after this long: 10m, 90s, 1h.")
    ] = None,
    emit_config: Annotated[
        Path | None, _opt("--emit", help="Winning pipeline YAML (default: OUTPUT with .yaml).")
    ] = None,
) -> None:
    """Find the smallest model within a budget: pruning sparsity and shared-value count are
    searched (each candidate compressed and judged), the best is written with its pipeline.

    Example: mcompress tune model.onnx --data val.npz --max-accuracy-drop 0.01
    """
    if objective not in ("size", "latency"):
        raise UsageError(f"--objective: '{objective}' is not size or latency")
    seconds = tuning.parse_duration(time_budget) if time_budget else None
    cfg = with_cli_validation(tuning.template(seconds, calibration, objective), opts)
    opts.output = opts.output or model_io.default_output(model, "tuned")
    yaml_path = emit_config or tuning.emitted_path(opts.output)
    result = _search_and_write(cfg, model, opts, yaml_path)
    emit(result, opts)


def _search_and_write(cfg: Any, model: Path, opts: WriteOptions, yaml_path: Path) -> Any:
    """Plan every output, search, then write the winning pipeline, model and reports."""
    assert opts.output is not None
    with Outputs(opts.force) as outs:
        outs.add(opts.output, "-o", replaces_model=True)
        outs.add(yaml_path, "--emit")
        add_report_paths(outs, opts)
        outs.add_input(model, "input model")
        outs.check()
        trials: list[budget.Trial] = []

        def show(trial: budget.Trial) -> None:
            trials.append(trial)
            if not opts.json_out:
                err.print(tuning.describe(trial, len(trials)), soft_wrap=True, highlight=False)

        options = pipeline.RunOptions(input_path=model, output=opts.output, command="tune")

        def say(line: str) -> None:
            if not opts.json_out:
                err.print(line, soft_wrap=True, highlight=False)

        chosen, section = budget.search(
            cfg, model, pipeline.trial_runner(options), show, say, layer_search.refine
        )
        header = (
            f"mcompress tune {model.name}: {section['chosen']['label']}\n"
            f"`mcompress run {model.name} -c {yaml_path.name}` writes the same model"
        )
        outs.write_text(yaml_path, tuning.to_yaml(chosen, header))
        with ProgressDisplay(quiet=opts.json_out) as progress:
            options = pipeline.RunOptions(
                input_path=model, output=opts.output, outputs=outs, command="tune",
                progress=progress,
            )  # fmt: skip
            result = pipeline.run(chosen, options)
        result.search = {**section, "config": str(yaml_path)}
        result.notes.extend(section["notes"])
        result.notes.append(f"winning pipeline written to {yaml_path}")
        stage_reports(outs, result, opts)
        outs.commit()
    return result
