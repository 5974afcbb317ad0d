"""Structured `prune` with calibration data: channels are chosen by the output error their
removal causes in the layers that consume them (ThiNet), and those layers are re-fitted by least
squares on the original model's activations (mcompress.recover.channels)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mcompress.model_io import Model
from mcompress.passes.base import PassContext
from mcompress.passes.prune.channel_layout import Analysis, AxisEdit
from mcompress.recover import solve
from mcompress.recover.activations import SegmentRunner, batches
from mcompress.recover.blas import single_thread
from mcompress.recover.channels import ConsumerState, choose_across_groups
from mcompress.recover.layers import Layer, find_layers
from mcompress.recover.options import Calibrated, load_calibration
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.sequential import Compressor, RecoveryStats, reconstruct
from mcompress.recover.stats import GramStats

_NONE = np.empty(0, np.int64)


@dataclass
class Consumer:
    """A layer reading pruned channels: its statistics and, per group, each channel's columns."""

    layer: Layer
    stats: GramStats = field(default_factory=GramStats)
    blocks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)


def consumers_of(model: Model, analysis: Analysis) -> list[Consumer]:
    """Main-graph layers whose input-channel axis is laid out with channel groups."""
    layers = {layer.weight.name: layer for layer in find_layers(model)}
    found: dict[str, Consumer] = {}
    for edit in analysis.axis_edits:
        layer = layers.get(edit.init.weight.name)
        if layer is None or edit.importance or edit.reader is not None:
            continue
        if edit.axis % len(layer.weight.shape) != _input_axis(layer):
            continue
        consumer = found.setdefault(layer.weight.name, Consumer(layer))
        _add_blocks(consumer, analysis, edit)
    return sorted(found.values(), key=lambda c: c.layer.position)


def _input_axis(layer: Layer) -> int:
    if layer.kind == "conv":
        return 1 if layer.groups == 1 else -1
    if layer.kind == "gemm":
        return 1 if layer.trans_b else 0
    return 0


def _add_blocks(consumer: Consumer, analysis: Analysis, edit: AxisEdit) -> None:
    span = int(np.prod(consumer.layer.kernel)) if consumer.layer.kind == "conv" else 1
    offset = 0
    for seg in edit.segments:
        if seg.group is not None:
            root = analysis.root(seg.group)
            blocks = consumer.blocks.setdefault(root, {})
            for ch in range(seg.channels):
                idx = offset + ch * seg.block + np.arange(seg.block)
                cols = (idx[:, None] * span + np.arange(span)[None, :]).reshape(-1)
                blocks[ch] = np.concatenate([blocks.get(ch, np.empty(0, np.int64)), cols])
        offset += seg.channels * seg.block


def collect(model: Model, consumers: list[Consumer], feeds: list[dict[str, np.ndarray]]) -> None:
    """Gram statistics of every consumer's input in the original model (one forward pass)."""
    runner = SegmentRunner(model, batches(feeds, model))
    for consumer in consumers:
        for batch in runner.inputs(consumer.layer):
            consumer.stats.add(consumer.layer, batch.xc, None)


def choose(
    model: Model,
    analysis: Analysis,
    norm_keep: dict[int, np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    step: int,
) -> tuple[dict[int, np.ndarray], list[Consumer]]:
    """Kept channels per group, by the consumers' reconstruction error on the original model's
    activations (by norm where a group has no consumer recovery can read)."""
    consumers = [c for c in consumers_of(model, analysis) if c.layer.groups == 1]
    collect(model, consumers, feeds)
    keep = dict(norm_keep)
    groups = {}
    for gid in norm_keep:
        states = [
            ConsumerState.start(c.layer.matrices()[0], c.stats.hcc[0], dict(c.blocks[gid]))
            for c in consumers
            if gid in c.blocks and c.stats.hcc is not None
        ]
        if states:
            groups[gid] = (states, analysis.groups[gid].channels)
    remove = sum(analysis.groups[g].channels - int(norm_keep[g].size) for g in groups)
    keep.update(choose_across_groups(groups, remove, step))
    return keep, consumers


def removed_columns(
    consumers: list[Consumer], keep: dict[int, np.ndarray]
) -> dict[str, np.ndarray]:
    """Input columns each consumer loses, by weight name."""
    return {c.layer.weight.name: _removed(c, keep) for c in consumers}


def refitter(removed: dict[str, np.ndarray]) -> Compressor:
    """Every layer re-fitted to the original's outputs; consumers without their removed columns.
    A layer without bias keeps none (pruning slices only the tensors it knows)."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        assert stats.hcc is not None
        gone = removed.get(layer.weight.name)
        if gone is None and not solve.untouched(mats, prunable_columns(layer, mats)):
            return mats  # pruned or clustered before: re-fitting would undo that
        target = solve.ls_target(mats, stats.hcc, stats.cross())
        mask = np.zeros(mats.shape, bool)
        mask[..., _NONE if gone is None else gone] = True
        if layer.has_bias_column and layer.bias is None:
            mask[..., -1] = True
        if not mask.any():
            return target
        return solve.refit_masked(target, solve.damped(stats.hcc), mask)

    return compress


def dropped(removed: dict[str, np.ndarray]) -> Compressor:
    """The removed columns zeroed, no re-fit (the report's 'without')."""

    def compress(layer: Layer, mats: np.ndarray, stats: GramStats) -> np.ndarray:
        out = mats.copy()
        out[..., removed.get(layer.weight.name, _NONE)] = 0
        return out

    return compress


def _removed(consumer: Consumer, keep: dict[int, np.ndarray]) -> np.ndarray:
    cols = [
        blocks[ch]
        for gid, blocks in consumer.blocks.items()
        if gid in keep
        for ch in blocks
        if ch not in set(keep[gid].tolist())
    ]
    return np.concatenate(cols).astype(np.int64) if cols else _NONE


def run(
    model: Model,
    analysis: Analysis,
    norm_keep: dict[int, np.ndarray],
    cfg: Calibrated,
    ctx: PassContext,
    step: int,
) -> tuple[dict[int, np.ndarray], RecoveryStats]:
    """Channels to keep and consumers re-fitted on `cfg`'s calibration data."""
    started = time.perf_counter()
    calibration = load_calibration(model, cfg, ctx)
    recovery = RecoveryStats(calibration.source, calibration.synthetic, len(calibration.feeds))
    with single_thread():
        keep, consumers = choose(model, analysis, norm_keep, calibration.feeds, max(step, 1))
    removed = removed_columns(consumers, keep)
    reconstruct(
        model,
        find_layers(model),
        calibration.feeds,
        refitter(removed),
        dropped(removed),
        recovery,
        ctx.progress,
    )
    recovery.seconds = round(time.perf_counter() - started, 3)
    return keep, recovery
