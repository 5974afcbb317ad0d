"""`mcompress prune`: magnitude or channel pruning."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcompress.cli.common import (
    CalibrationOpt,
    ExcludeOpt,
    ModelArg,
    RecoverOpt,
    writes_model,
)


@writes_model("pruned", pass_type="prune")
def prune(
    model: ModelArg,
    sparsity: Annotated[
        float | None,
        typer.Option("--sparsity", "-s", help="Fraction of weights (or channels) to remove."),
    ] = None,
    scope: Annotated[
        str | None, typer.Option("--scope", help="layer (default) or global threshold.")
    ] = None,
    min_elements: Annotated[
        int | None, typer.Option("--min-elements", help="Skip tensors smaller than this.")
    ] = None,
    include_biases: Annotated[
        bool | None, typer.Option("--include-biases", help="Also prune biases.")
    ] = None,
    exclude: ExcludeOpt = None,
    structured: Annotated[
        bool | None,
        typer.Option("--structured", help="Remove whole channels: smaller dense model."),
    ] = None,
    criterion: Annotated[
        str | None,
        typer.Option(
            "--criterion",
            help="Structured: l1 (default) or l2. Unstructured: magnitude, wanda or sparsegpt "
            "(default with --calibration).",
        ),
    ] = None,
    n_m: Annotated[
        str | None,
        typer.Option("--n-m", metavar="N:M", help="Remove N of every M inputs, e.g. 2:4."),
    ] = None,
    calibration: CalibrationOpt = None,
    recover: RecoverOpt = None,
    round_to: Annotated[
        int | None,
        typer.Option("--round-to", help="Keep channel counts multiples of N (default 4)."),
    ] = None,
) -> dict[str, Any]:
    """Zero the smallest weights (the file shrinks), or remove whole channels (--structured).

    Example: mcompress prune model.onnx --sparsity 0.5   # writes model.pruned.onnx
    With --calibration calib.npz each layer is re-fitted to the original's outputs.
    """
    return {
        "sparsity": sparsity,
        "scope": scope,
        "min_elements": min_elements,
        "include_biases": include_biases,
        "exclude": exclude or None,
        "structured": structured,
        "criterion": criterion,
        "round_to": round_to,
        "n_m": n_m,
        "calibration": calibration,
        "recover": recover,
    }
