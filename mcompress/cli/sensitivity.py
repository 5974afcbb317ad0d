"""`mcompress sensitivity`: each layer alone at several levels, ranked by damage."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mcompress.cli.common import EXIT_CODES_HELP, InputShapeOpt, ModelArg, app, out
from mcompress.errors import UsageError
from mcompress.outputs import Outputs
from mcompress.report import finite


@app.command(epilog=EXIT_CODES_HELP)
def sensitivity(
    model: ModelArg,
    data: Annotated[
        Path | None, typer.Option("--data", help="Validation .npz (with 'labels': accuracy).")
    ] = None,
    pass_type: Annotated[
        str,
        typer.Option(
            "--pass",
            help="prune (default), quantize or cluster: the pass's own code alters each layer.",
            show_default=False,
        ),
    ] = "prune",
    levels: Annotated[
        str | None,
        typer.Option(
            "--levels",
            help="Comma list: sparsities for prune (0.3,0.5,0.7,0.9), bits for quantize (8,4), "
            "shared values for cluster (16,4).",
        ),
    ] = None,
    max_layers: Annotated[
        int, typer.Option("--max-layers", help="Probe at most N layers, largest first (0: all).")
    ] = 40,
    samples: Annotated[
        int | None,
        typer.Option("--samples", help="Inputs per trial (default: 256 from --data, else 32)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for random inputs.")] = 0,
    input_shape: InputShapeOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write JSON here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write an HTML chart here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing reports.")] = False,
) -> None:
    """Prune (or quantize) each layer alone at several levels and rank layers by damage.

    Example: mcompress sensitivity model.onnx --data val.npz --levels 0.5,0.9
    """
    from mcompress import sensitivity as sens
    from mcompress.cli.common import ProgressDisplay, parse_shape

    if pass_type not in ("prune", "quantize", "cluster"):
        raise UsageError(f"--pass must be prune, quantize or cluster, not '{pass_type}'")
    parsed = sens.parse_levels(levels, pass_type)
    shapes = {k: tuple(v) for k, v in (parse_shape(s) for s in input_shape or [])}
    with Outputs(force) as outs, ProgressDisplay(quiet=json_out) as progress:
        outs.add_input(model, "input model")
        outs.add_input(data, "--data file")
        outs.add(report, "--report")
        outs.add(html, "--html")
        outs.check()
        result = sens.analyze(
            model,
            pass_type=pass_type,
            levels=parsed,
            data=data,
            samples=samples or (256 if data is not None else 32),
            seed=seed,
            input_shapes=shapes,
            max_layers=max_layers,
            progress=progress,
        )
        text = json.dumps(finite(result), indent=2)
        if report is not None:
            outs.write_text(report, text)
        if html is not None:
            outs.write_text(html, _html_page(result))
        outs.commit()
    if json_out:
        sys.stdout.write(text + "\n")
        return
    out.print(sensitivity_table(result))
    for note in result["notes"]:
        out.print(f"note: {note}")


def sensitivity_table(result: dict[str, Any]) -> Table:
    """Layers sorted from most to least sensitive; one column per level."""
    metric = result["metric"]
    title = (
        f"sensitivity to {result['pass']} ({metric}; baseline {result['baseline']:.4g}; "
        f"{result['layers_probed']} of {result['layers_total']} layers)"
    )
    table = Table(title=title, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("layer")
    table.add_column("op")
    table.add_column("params", justify="right")
    unit = {"prune": "", "quantize": " bits", "cluster": " values"}[result["pass"]]
    for level in result["levels"]:
        table.add_column(f"{level:g}{unit}", justify="right")
    table.add_column("score", justify="right")
    for rank, row in enumerate(result["layers"], 1):
        cells = [f"{r['metric']:.4f}" for r in row["results"]]
        table.add_row(
            str(rank),
            row["name"],
            ",".join(row["ops"]),
            f"{row['elements']:,}",
            *cells,
            _score_text(row["score"]),
        )
    return table


def _score_text(score: float) -> str:
    color = "red" if score > 0.05 else "yellow" if score > 0.01 else "green"
    return f"[{color}]{score:.4f}[/{color}]"


def _html_page(result: dict[str, Any]) -> str:
    """A small standalone page: the sensitivity chart (one line per layer) and the JSON."""
    from html import escape

    from mcompress.render_charts import sensitivity_svg

    rows = [
        {"layer": row["name"], "level": r["level"], "metric": r["metric"]}
        for row in result["layers"]
        for r in row["results"]
    ]
    unit = {"prune": "sparsity", "quantize": "bits", "cluster": "shared values"}[result["pass"]]
    title = f"{result['metric']} vs {unit}, each layer alone"
    svg = sensitivity_svg(rows, title=title, metric=result["metric"])
    name = escape(Path(result["model"]).name)
    data = escape(json.dumps(finite(result), indent=2))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>mcompress sensitivity: {name}</title></head><body>"
        f"<h1>Sensitivity of {name} to {result['pass']}</h1>{svg}"
        f"<details><summary>data</summary><pre>{data}</pre></details></body></html>\n"
    )
