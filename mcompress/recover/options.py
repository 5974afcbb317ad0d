"""The options every pass with calibration-based recovery shares, and where its data comes from.

Recovery is on whenever calibration data is given (`--calibration` / `calibration:`), and
`recover: false` (`--no-recover`) turns it off. Without calibration data a pass notes once that
recovery needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydantic import Field

from mcompress.errors import PassError
from mcompress.model_io import Model
from mcompress.passes.base import PassConfig, PassContext
from mcompress.recover.activations import Batch

NO_DATA_NOTE = (
    "{name}: no calibration data, so no recovery (layer-wise reconstruction against the "
    "original); pass --calibration FILE.npz (or calibration: random) to recover accuracy"
)


class RecoveryConfig(PassConfig):
    """Calibration and recovery options (mixed into a pass's Config)."""

    calibration: str | None = Field(
        None,
        description="calibration inputs: .npz keyed by input names, a folder of them, or "
        "'random' (synthetic); turns on recovery",
    )
    calibration_samples: int = Field(128, ge=1, le=100_000, description="calibration inputs used")
    recover: bool = Field(
        True, description="reconstruct compressed layers against the original on calibration data"
    )


class Calibrated(Protocol):
    """What recovery reads from a pass config."""

    @property
    def calibration(self) -> str | None: ...
    @property
    def calibration_samples(self) -> int: ...
    @property
    def recover(self) -> bool: ...


@dataclass
class Calibration:
    """Calibration feeds (one dict per sample), their labels when the data has them (distill
    fits to them), and where they came from."""

    feeds: list[Batch]
    labels: np.ndarray | None
    source: str
    synthetic: bool


def check_calibration(cfg: Calibrated) -> None:
    """Fail before any work on a calibration path that does not exist."""
    if cfg.calibration not in (None, "random") and not Path(str(cfg.calibration)).exists():
        raise PassError(
            f"calibration data '{cfg.calibration}' does not exist",
            "give an .npz keyed by input names, a folder of them, or calibration: random",
        )


def wants_recovery(cfg: Calibrated) -> bool:
    """Recovery runs when it is on and calibration data is given."""
    return cfg.recover and cfg.calibration is not None


def load_calibration(model: Model, cfg: Calibrated, ctx: PassContext) -> Calibration:
    """Calibration inputs for `model`, read like `--data` (inputs.make_feeds)."""
    from mcompress.inputs import make_feeds

    random = cfg.calibration == "random"
    inputs = make_feeds(
        model,
        data=None if random else Path(str(cfg.calibration)),
        samples=cfg.calibration_samples,
        seed=ctx.seed,
        input_shapes=ctx.input_shapes,
    )
    source = "random" if random else str(cfg.calibration)
    return Calibration(inputs.feeds, inputs.labels, source, random)
