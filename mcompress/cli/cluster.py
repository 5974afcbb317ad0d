"""`mcompress cluster`: weight sharing with K shared values per tensor (or per channel)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mcompress.cli.common import ExcludeOpt, ModelArg, writes_model


@writes_model("clustered", pass_type="cluster")
def cluster(
    model: ModelArg,
    clusters: Annotated[
        int | None,
        typer.Option("-k", "--clusters", help="Shared values per tensor, 2..256 (default 16)."),
    ] = None,
    per_channel: Annotated[
        bool | None,
        typer.Option("--per-channel/--per-tensor", help="One set of K values per output channel."),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init", help="Starting centroids: auto, linear, density, kmeans++ or random."
        ),
    ] = None,
    max_iter: Annotated[int | None, typer.Option("--max-iter", help="Lloyd iterations.")] = None,
    min_elements: Annotated[
        int | None, typer.Option("--min-elements", help="Leave smaller tensors alone.")
    ] = None,
    exclude: ExcludeOpt = None,
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
    }
