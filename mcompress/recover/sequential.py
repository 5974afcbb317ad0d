"""Sequential layer-wise reconstruction: each layer is compressed on statistics from the model
whose earlier layers are already compressed, fitted to the ORIGINAL layer's outputs
(GPTQ / SparseGPT style), so errors do not compound from layer to layer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mcompress.graph import FreshNames
from mcompress.model_io import Model
from mcompress.recover.activations import Batch, SegmentRunner, batches
from mcompress.recover.blas import single_thread
from mcompress.recover.layers import Layer, unreached_layers
from mcompress.recover.ridge import held_out_ridge
from mcompress.recover.scope import Scope
from mcompress.recover.stats import GramStats, combined, output_error

# (layer, original matrices, statistics) -> compressed matrices
Compressor = Callable[[Layer, np.ndarray, GramStats], np.ndarray]


@dataclass
class LayerRecovery:
    """One layer's output error (relative, squared, vs the original layer on calibration data)
    without recovery and with it, and the seconds spent on it."""

    name: str
    error_without: float
    error_with: float
    seconds: float


@dataclass
class RecoveryStats:
    """What calibration-based recovery did in a pass (the report's `recovery` section)."""

    calibration: str
    synthetic: bool
    samples: int
    layers: list[LayerRecovery] = field(default_factory=list)
    seconds: float = 0.0
    segment_runs: int = 0
    unreached: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the summary: layers, mean output error without and with recovery."""
        missed = ""
        if self.unreached:
            first = self.unreached[0]
            missed = (
                f"{len(self.unreached)} weighted layers not reconstructed (e.g. {first['op']} "
                f"'{first['name']}': {first['reason']}; see the report's recovery.unreached)"
            )
        if not self.layers:
            return f"recovery: no layer reconstructed; {missed or 'the model has no layer'}"
        without = float(np.mean([r.error_without for r in self.layers]))
        with_ = float(np.mean([r.error_with for r in self.layers]))
        data = "synthetic inputs" if self.synthetic else f"{self.samples} samples"
        return (
            f"recovery: {len(self.layers)} layers reconstructed on {data} of {self.calibration}, "
            f"mean layer output error {without:.3g} -> {with_:.3g} ({self.seconds:.1f} s)"
            + (f"; {missed}" if missed else "")
        )


def reconstruct(
    model: Model,
    layers: list[Layer],
    feeds: list[Batch],
    compress: Compressor,
    baseline: Compressor,
    stats: RecoveryStats,
    progress: Callable[[str, int, int], None] = lambda label, done, total: None,
    scope: Scope | None = None,
) -> None:
    """Compress `layers` (in the order of `scope`'s nodes, the main graph's by default) in
    place with `compress`; `baseline` is the same compression without recovery, measured for
    the report."""
    with single_thread():
        _reconstruct(model, layers, feeds, compress, baseline, stats, progress, scope)


def _reconstruct(
    model: Model,
    layers: list[Layer],
    feeds: list[Batch],
    compress: Compressor,
    baseline: Compressor,
    stats: RecoveryStats,
    progress: Callable[[str, int, int], None],
    scope: Scope | None,
) -> None:
    started = time.perf_counter()
    stats.unreached = unreached_layers(model, scope)
    runner = SegmentRunner(model, batches(feeds, model), scope)
    names = FreshNames(model.proto)
    ordered = sorted(layers, key=lambda layer: layer.position)
    for done, layer in enumerate(ordered):
        progress("recover", done, len(ordered))
        t0 = time.perf_counter()
        gram = layer_stats(layer, runner)
        runner.remember(layer)
        original = layer.matrices()
        new = compress(layer, original, gram)
        plain = baseline(layer, original, gram)
        layer.store(new, model, names)
        stats.layers.append(
            LayerRecovery(
                layer.name,
                round(output_error(plain, original, gram), 6),
                round(output_error(new, original, gram), 6),
                round(time.perf_counter() - t0, 3),
            )
        )
    progress("recover", len(ordered), len(ordered))
    stats.seconds = round(time.perf_counter() - started, 3)
    stats.segment_runs = runner.runs


def layer_stats(layer: Layer, runner: SegmentRunner) -> GramStats:
    """The layer's statistics over all calibration batches, with the ridge that generalises
    best from one half of the batches (alternate ones) to the other (`held_out_ridge`)."""
    halves = (GramStats(), GramStats())
    for i, batch in enumerate(runner.inputs(layer)):
        halves[i % 2].add(layer, batch.xc, batch.xo)
    gram = combined(*halves)
    gram.ridge = held_out_ridge(layer.matrices(), *halves)
    return gram
