"""`mcompress prune`: magnitude or channel pruning."""

from __future__ import annotations

from typing import Annotated, Any

from mcompress.cli.common import (
    CalibrationOpt,
    ExcludeOpt,
    ModelArg,
    RecoverOpt,
    config_option,
    writes_model,
)
from mcompress.passes.prune import Config


@writes_model("pruned", pass_type="prune")
def prune(
    model: ModelArg,
    sparsity: Annotated[float | None, config_option(Config, "sparsity", "--sparsity", "-s")] = None,
    scope: Annotated[str | None, config_option(Config, "scope", "--scope")] = None,
    min_elements: Annotated[
        int | None, config_option(Config, "min_elements", "--min-elements")
    ] = None,
    include_biases: Annotated[
        bool | None, config_option(Config, "include_biases", "--include-biases")
    ] = None,
    exclude: ExcludeOpt = None,
    structured: Annotated[bool | None, config_option(Config, "structured", "--structured")] = None,
    criterion: Annotated[str | None, config_option(Config, "criterion", "--criterion")] = None,
    n_m: Annotated[str | None, config_option(Config, "n_m", "--n-m", metavar="N:M")] = None,
    calibration: CalibrationOpt = None,
    recover: RecoverOpt = None,
    round_to: Annotated[int | None, config_option(Config, "round_to", "--round-to")] = None,
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
