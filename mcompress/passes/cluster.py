"""`cluster` pass (placeholder until its issue lands)."""

from __future__ import annotations

from typing import Literal

from mcompress.errors import PassError
from mcompress.model_io import Model
from mcompress.passes.base import PassConfig, PassContext, PassResult

summary = "not implemented yet"


class Config(PassConfig):
    type: Literal["cluster"] = "cluster"


def check(model: Model, cfg: Config) -> None:
    raise PassError("the cluster pass is not implemented yet")


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    raise PassError("the cluster pass is not implemented yet")
