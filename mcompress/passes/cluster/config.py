"""Options of the cluster pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcompress.passes.base import Exclude, checked_overrides, overrides_field
from mcompress.passes.cluster.kmeans1d import MAX_CLUSTERS
from mcompress.recover.options import RecoveryConfig


class Config(RecoveryConfig):
    """Options of the cluster pass (YAML `{type: cluster, ...}`)."""

    type: Literal["cluster"] = "cluster"
    clusters: int = Field(
        16, ge=2, le=MAX_CLUSTERS, description="shared values per tensor (or per channel)"
    )
    per_channel: bool = Field(False, description="one set of K values per output channel")
    init: Literal["auto", "linear", "density", "kmeans++", "random"] = Field(
        "auto",
        description="starting centroids: auto (optimal on a summary, then split), linear "
        "(evenly spaced), density (quantiles), kmeans++ or random (seeded)",
    )
    max_iter: int = Field(300, ge=1, le=100_000, description="Lloyd iterations at most")
    tol: float = Field(1e-6, ge=0, le=1, description="stop when inertia improves less (relative)")
    seed: int = Field(0, description="seed for the kmeans++ and random inits")
    min_elements: int = Field(
        256,
        ge=0,
        description="leave tensors smaller than this (or than 2 x clusters) alone: their "
        "codebook would cost about what it saves",
    )
    exclude: Exclude = ()
    layers: dict[str, int] = overrides_field("shared values", "`clusters`")

    @field_validator("layers")
    @classmethod
    def _layer_clusters(cls, layers: dict[str, int]) -> dict[str, int]:
        return checked_overrides(
            layers, lambda k: 2 <= k <= MAX_CLUSTERS, "clusters", f"2..{MAX_CLUSTERS}"
        )

    def for_weight(self, name: str) -> Config:
        """These options with the cluster count of weight `name` (its `layers` entry)."""
        if name not in self.layers:
            return self
        return self.model_copy(update={"clusters": self.layers[name]})
