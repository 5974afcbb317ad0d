"""`mcompress cluster`: weight sharing with K shared values per tensor (or per channel)."""

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
from mcompress.passes.cluster import Config


@writes_model("clustered", pass_type="cluster")
def cluster(
    model: ModelArg,
    clusters: Annotated[int | None, config_option(Config, "clusters", "-k", "--clusters")] = None,
    per_channel: Annotated[
        bool | None, config_option(Config, "per_channel", "--per-channel/--per-tensor")
    ] = None,
    init: Annotated[str | None, config_option(Config, "init", "--init")] = None,
    max_iter: Annotated[int | None, config_option(Config, "max_iter", "--max-iter")] = None,
    min_elements: Annotated[
        int | None, config_option(Config, "min_elements", "--min-elements")
    ] = None,
    exclude: ExcludeOpt = None,
    calibration: CalibrationOpt = None,
    recover: RecoverOpt = None,
) -> dict[str, Any]:
    """Share weights: replace each weight by the nearest of K values, stored as a codebook.

    Zeros stay exactly zero, so clustering a pruned model keeps its sparsity.

    Example: mcompress cluster model.onnx --clusters 16   # writes model.clustered.onnx
    """
    return {
        "clusters": clusters,
        "per_channel": per_channel,
        "init": init,
        "max_iter": max_iter,
        "min_elements": min_elements,
        "exclude": tuple(exclude) if exclude else None,
        "calibration": calibration,
        "recover": recover,
    }
