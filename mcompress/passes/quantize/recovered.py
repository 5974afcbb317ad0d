"""`quantize --calibration` outside static mode: GPTQ rounding (mcompress.recover.rounding)
puts each layer's weights on the grid this pass then uses (4-bit blocks for MatMuls with 4-bit
storage, int8 elsewhere), compensating each rounding error in the weights not yet rounded,
layer by layer against the original's outputs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from mcompress.graph import node_excluded
from mcompress.model_io import Model
from mcompress.passes.base import PassContext
from mcompress.passes.quantize import int4_storage
from mcompress.passes.quantize import matmul as quantize_matmul
from mcompress.passes.quantize.config import Config
from mcompress.passes.quantize.math import quantize
from mcompress.passes.quantize.weights import Target
from mcompress.recover import solve, tables
from mcompress.recover.branches import taken_scope
from mcompress.recover.layers import Layer, find_layers
from mcompress.recover.options import load_calibration, wants_recovery
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.rounding import Grid, GridOf, nearest, rounder, uniform_grid
from mcompress.recover.sequential import RecoveryStats, reconstruct

INT8_MAX = 127


def holds_tables(cfg: Config) -> bool:
    """Whether weights no layer reconstructs stay int8 (Gather tables too) with bits: 4:
    under recovery, whose GPTQ cannot undo a table's 4-bit error (mcompress.recover.tables)."""
    return cfg.mode != "static" and wants_recovery(cfg) and cfg.weights_symmetric


def pre_round(
    model: Model, cfg: Config, ctx: PassContext, targets: list[Target]
) -> tuple[dict[str, Any] | None, list[str]]:
    """GPTQ-round the `targets` in place when calibration data is given; (recovery stats,
    notes). Targets no layer reconstructs are first rounded to the int8 grid they will be
    stored on, so the layers after them are fitted around their error."""
    if cfg.mode == "static" or not wants_recovery(cfg):
        return None, []
    if not cfg.weights_symmetric:
        return None, [
            "quantize: GPTQ rounding covers symmetric weights; these weights were rounded to "
            "nearest"
        ]
    notes = []
    if cfg.bits == 4 and cfg.mode != "dynamic":
        notes.append(
            "quantize: 4-bit MatMul weights written by onnxruntime's MatMulNBits quantizer are "
            "rounded to nearest (GPTQ covers mode: dynamic); other weights use GPTQ int8"
        )
    settled = _settle(model, cfg, targets)
    if settled:
        notes.append(_settled_note(settled, cfg))
    names = {t.name for t in targets}
    calibration = load_calibration(model, cfg, ctx)
    scope = taken_scope(model, calibration.feeds)
    layers = [
        layer
        for layer in find_layers(model, scope=scope)
        if not node_excluded(layer.node, cfg.exclude) and _rounded_or_refitted(layer, names)
    ]
    recovery = RecoveryStats(calibration.source, calibration.synthetic, len(calibration.feeds))
    grids = grid_chooser(model, cfg, names)
    reconstruct(
        model,
        layers,
        calibration.feeds,
        rounder(grids),
        nearest(grids),
        recovery,
        ctx.progress,
        scope,
    )
    notes.insert(0, recovery.summary())
    if recovery.synthetic:
        notes.append("quantize: GPTQ calibrated on synthetic random inputs (calibration: random)")
    return asdict(recovery), notes


def _rounded_or_refitted(layer: Layer, targets: set[str]) -> bool:
    """Whether `rounding.rounder` changes this layer: a target not already on few shared
    values, or a weight no earlier pass shaped (re-fitted). Others (clustered, or pruned and
    left float) come out as they went in, so the sweep skips their statistics."""
    mats = layer.matrices()
    cols = prunable_columns(layer, mats)
    if np.unique(mats[..., cols]).size <= solve.SHARED_VALUES:
        return False
    return layer.weight.name in targets or solve.untouched(mats, cols)


def _settle(model: Model, cfg: Config, targets: list[Target]) -> list[Target]:
    """Round the targets no Conv/Gemm/MatMul reads (embedding tables, LSTM weights) in place
    to the int8 grid the pass stores them on, which its own rounding then reproduces."""
    weights = {w.name: w for w in model.weights()}
    settled = []
    for target in targets:
        ops = {use.node.op_type for use in target.uses}
        weight = weights.get(target.name)
        if ops <= tables.RECONSTRUCTED_OPS or weight is None:
            continue
        values = np.asarray(weight.array(), np.float32)
        if not np.isfinite(values).all():
            continue
        axis = target.axis if cfg.per_channel else None
        weight.replace(quantize(values, axis=axis, symmetric=True).dequantize())
        settled.append(target)
    return settled


def _settled_note(settled: list[Target], cfg: Config) -> str:
    first = settled[0]
    ops = ", ".join(sorted({use.node.op_type for use in first.uses}))
    held = " (not 4-bit: no later layer can undo a table's 4-bit error)" if cfg.bits == 4 else ""
    return (
        f"quantize: {len(settled)} weights recovery cannot reconstruct (e.g. '{first.name}', "
        f"read by {ops}) stored as int8{held}, rounded first so GPTQ fits the layers after "
        "them around their error"
    )


def grid_chooser(model: Model, cfg: Config, weights: set[str]) -> GridOf:
    """The grid the pass will store each weight on (see `quantize.apply`): 4-bit blocks for a
    MatMul the dynamic 4-bit step rewrites, the dynamic int8 MatMul's 7- or 8-bit grid, int8
    weight-only storage for the rest (weights inside If branches included: those steps rewrite
    main-graph nodes only); None for MatMuls onnxruntime's 4-bit quantizer writes."""
    dynamic = cfg.mode == "dynamic" and model.opset() >= quantize_matmul.MIN_OPSET
    matmul_qmax = 2 ** (quantize_matmul.weight_bits() - 1) - 1
    main = {t.name for t in model.proto.graph.initializer}

    def grid_of(layer: Layer, mats: np.ndarray, cols: np.ndarray) -> Grid | None:
        if layer.weight.name not in weights:
            return None
        if layer.weight.name not in main:  # in an If branch: stored int8 weight-only
            return uniform_grid(mats, cols, cfg.per_channel, INT8_MAX)
        if layer.kind == "matmul" and cfg.bits == 4:
            if not dynamic:
                return None
            weight = np.asarray(layer.weight.array())
            if int4_storage.fits(weight.shape[0], cfg.block_size):
                return int4_grid(weight, cfg.block_size)
            return uniform_grid(mats, cols, True, matmul_qmax)
        runs_dynamic = layer.kind == "matmul" or (
            cfg.bits == 8 and quantize_matmul.plain_gemm(layer.node)
        )
        if dynamic and runs_dynamic:
            return uniform_grid(mats, cols, cfg.per_channel, matmul_qmax)
        return uniform_grid(mats, cols, cfg.per_channel, INT8_MAX)

    return grid_of


def int4_grid(weight: np.ndarray, block_size: int) -> Grid:
    """The 4-bit block grid `int4_storage.quantize` gives a MatMul weight `[K, N]` (matrices
    `[1, N, K]`): step = block multiplier x column scale."""
    stored = int4_storage.quantize(np.asarray(weight, np.float32), block_size)
    k, n = weight.shape
    step = (stored.multipliers.astype(np.float64) * stored.scale).repeat(block_size, axis=1)
    blocks = np.abs(weight).reshape(k // block_size, block_size, n)
    pinned = np.zeros(blocks.shape, bool)
    np.put_along_axis(pinned, blocks.argmax(axis=1)[:, None, :], True, axis=1)
    return Grid(
        step.reshape(k, n).T[None],
        int4_storage.CODE_MAX,
        pinned.reshape(k, n).T[None],
    )
