"""The distill pass's work: hold out part of the calibration data, re-fit the last layers to
the teacher's activations, fit the classifier to the teacher's softened outputs, and measure
agreement and KL on the held-out samples before and after (nothing changes if either got
worse)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mcompress.errors import PassError
from mcompress.graph import FreshNames
from mcompress.model_io import Model, load_model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.distill.plan import Head, plan
from mcompress.passes.distill.quantized import Grid
from mcompress.passes.distill.runs import Agreement, agreement, as_log_probs, joined, tensors
from mcompress.recover.activations import batches
from mcompress.recover.blas import single_thread
from mcompress.recover.distill import (
    HeadData,
    KDOptions,
    TargetStats,
    fit_layer,
    fit_on_grid,
    kd_fit,
    nearest,
    storage,
)
from mcompress.recover.layers import Layer
from mcompress.recover.options import Calibration, load_calibration
from mcompress.recover.pruning import prunable_columns
from mcompress.recover.stats import patches

if TYPE_CHECKING:
    from mcompress.passes.distill import Config

Batch = dict[str, np.ndarray]


@dataclass
class LayerFit:
    """One re-fitted layer: relative output error against the teacher's layer output on the
    fitted samples, before and after, and its weight's form."""

    name: str
    storage: str
    error_before: float
    error_after: float
    seconds: float


@dataclass
class DistillStats:
    """What the distill pass did (the report's pass stats)."""

    teacher: str
    calibration: str
    synthetic: bool
    samples_fitted: int
    samples_held_out: int
    labels: bool
    temperature: float
    alpha: float
    before: Agreement | None = None
    after: Agreement | None = None
    layers: list[LayerFit] = field(default_factory=list)
    classifier: dict[str, Any] | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    reverted: bool = False
    rejected: Agreement | None = None  # what the fit gave when it was undone
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: held-out agreement and KL before -> after, what was fitted, seconds."""
        b, a = self.before, self.after
        assert b is not None and a is not None
        if not self.layers and not self.classifier:
            why = self.skipped[0]["reason"] if self.skipped else "no layer"
            return f"distill: nothing fitted, the model is unchanged ({why}; see skipped)"
        parts = [
            f"distill: held-out top-1 agreement {b.top1:.1%} -> {a.top1:.1%}, "
            f"KL {b.kl:.4g} -> {a.kl:.4g} ({self.samples_held_out} samples held out)"
        ]
        if self.layers:
            before = np.mean([r.error_before for r in self.layers])
            after = np.mean([r.error_after for r in self.layers])
            parts.append(
                f"{len(self.layers)} layers re-fitted (output error {before:.3g} -> {after:.3g})"
            )
        if self.classifier:
            labels = " and labels" if self.labels else ""
            parts.append(
                f"classifier '{self.classifier['name']}' fitted to T={self.temperature:g} "
                f"soft targets{labels} (best of {self.classifier['steps']} steps at "
                f"{self.classifier['best_step']})"
            )
        if self.skipped:
            parts.append(f"{len(self.skipped)} left alone (see skipped)")
        if self.reverted and self.rejected is not None:
            r = self.rejected
            parts.append(
                f"undone, the model is unchanged: the fit gave held-out agreement {r.top1:.1%}, "
                f"KL {r.kl:.4g}"
            )
        return "; ".join(parts) + f"; {self.seconds:.1f} s"


@dataclass
class Split:
    """Calibration samples fitted on and held out, batched, with their labels."""

    fit: list[Batch]
    held: list[Batch]
    fit_labels: np.ndarray | None
    held_labels: np.ndarray | None
    fit_count: int
    held_count: int


def split(model: Model, inputs: Calibration, holdout: float, seed: int) -> Split:
    """Hold out a seeded random `holdout` share of the samples (at least one each way)."""
    n = len(inputs.feeds)
    if n < 2:
        raise PassError(f"distill needs at least 2 calibration samples; the data has {n}")
    held_count = min(max(1, int(round(n * holdout))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    held_idx, fit_idx = np.sort(order[:held_count]), np.sort(order[held_count:])
    labels = inputs.labels

    def pick(idx: np.ndarray) -> list[Batch]:
        return batches([inputs.feeds[i] for i in idx], model)

    return Split(
        pick(fit_idx),
        pick(held_idx),
        None if labels is None else labels[fit_idx],
        None if labels is None else labels[held_idx],
        len(fit_idx),
        len(held_idx),
    )


def distill(model: Model, cfg: Config, teacher_path: Path, ctx: PassContext) -> PassResult:
    """Distil `model` in place from the teacher at `teacher_path`."""
    with single_thread():
        return _distill(model, cfg, teacher_path, ctx)


def _distill(model: Model, cfg: Config, teacher_path: Path, ctx: PassContext) -> PassResult:
    started = time.perf_counter()
    teacher = load_model(teacher_path)
    same_inputs(model, teacher, teacher_path)
    calibration = load_calibration(model, cfg, ctx)
    data = split(model, calibration, cfg.holdout, ctx.seed)
    stats = DistillStats(
        str(teacher_path), calibration.source, calibration.synthetic,
        data.fit_count, data.held_count, data.fit_labels is not None, cfg.temperature, cfg.alpha,
    )  # fmt: skip
    names = {o for n in teacher.proto.graph.node for o in n.output}
    todo = plan(
        model, names | {o.name for o in teacher.proto.graph.output}, cfg.layers, cfg.exclude
    )
    stats.skipped = todo.skipped
    output = todo.head.output if todo.head else model.proto.graph.output[0].name
    t_output = _teacher_output(model, teacher, output)
    wanted = [layer.node.output[0] for layer in todo.layers] + [t_output]
    teacher_fit = tensors(teacher.proto, teacher.base_dir, wanted, data.fit, "teacher")
    teacher_held = as_log_probs(
        joined(tensors(teacher.proto, teacher.base_dir, [t_output], data.held, "teacher"), t_output)
    )
    stats.before = _measure(model, output, data.held, teacher_held)
    undo: list[Callable[[], None]] = []
    fresh = FreshNames(model.proto)
    for done, layer in enumerate(todo.layers):
        ctx.progress("distill", done, len(todo.layers) + 1)
        grid = todo.grids.get(layer.position)
        row = _refit(model, layer, grid, teacher_fit, data.fit, fresh, undo)
        if isinstance(row, str):
            stats.skipped.append({"name": layer.name, "reason": row})
        else:
            stats.layers.append(row)
    if todo.head is not None:
        t_fit = as_log_probs(joined(teacher_fit, t_output))
        head = _fit_head(model, todo.head, cfg, data, (t_fit, teacher_held), fresh, undo)
        if isinstance(head, str):
            stats.skipped.append({"name": todo.head.layer.name, "reason": head})
        else:
            stats.classifier = head
    ctx.progress("distill", len(todo.layers) + 1, len(todo.layers) + 1)
    stats.after = _measure(model, output, data.held, teacher_held)
    if stats.after.kl > stats.before.kl or stats.after.top1 < stats.before.top1:
        for restore in reversed(undo):
            restore()
        stats.reverted, stats.rejected, stats.after = True, stats.after, stats.before
    stats.seconds = round(time.perf_counter() - started, 3)
    changed = bool(undo) and not stats.reverted
    return PassResult(modified=changed, stats=asdict(stats), notes=[stats.summary()])


def same_inputs(model: Model, teacher: Model, teacher_path: Path) -> None:
    """Refuse a teacher that does not read the student's inputs: not the same model."""

    def inputs(proto: onnx.ModelProto) -> list[str]:
        inits = {t.name for t in proto.graph.initializer}
        return sorted(i.name for i in proto.graph.input if i.name not in inits)

    theirs, ours = inputs(teacher.proto), inputs(model.proto)
    if theirs != ours:
        raise PassError(
            f"distill: the teacher '{teacher_path}' reads inputs {', '.join(theirs)}; the model "
            f"being distilled reads {', '.join(ours)}: give the original of this model"
        )


def _teacher_output(model: Model, teacher: Model, output: str) -> str:
    """The teacher's output of the name `output` has in the student (else the same position)."""
    names = [o.name for o in teacher.proto.graph.output]
    if output in names:
        return output
    position = [o.name for o in model.proto.graph.output].index(output)
    if position >= len(names):
        raise PassError(f"distill: the teacher has no output matching the student's '{output}'")
    return names[position]


def _measure(model: Model, output: str, held: list[Batch], teacher: np.ndarray) -> Agreement:
    student = as_log_probs(joined(tensors(model.proto, model.base_dir, [output], held), output))
    if student.shape != teacher.shape:
        raise PassError(
            f"distill: the teacher's output has {teacher.shape[-1]} scores per sample, the "
            f"model's '{output}' {student.shape[-1]}: give the original of this model"
        )
    return agreement(teacher, student)


def _refit(
    model: Model,
    layer: Layer,
    grid: Grid | None,
    teacher: list[Batch],
    fit: list[Batch],
    fresh: FreshNames,
    undo: list[Callable[[], None]],
) -> LayerFit | str:
    """Re-fit one layer to the teacher's output of it; the reason when it cannot be."""
    started = time.perf_counter()
    source, target = layer.node.input[0], layer.node.output[0]
    inputs = tensors(model.proto, model.base_dir, [source], fit)
    mats = layer.matrices() if grid is None else grid.matrices()
    channels = mats.shape[0] * mats.shape[1]
    stats = TargetStats()
    for x, t in zip(inputs, teacher, strict=True):
        y = t[target]
        out_channels = y.shape[1] if layer.kind == "conv" else y.shape[-1]
        if out_channels != channels:
            return f"its output has {channels} channels, the teacher's {out_channels}"
        try:
            stats.add(layer, x[source], y)
        except ValueError as exc:
            return f"its output does not match the teacher's: {exc}"
    cols = prunable_columns(layer, mats)
    if grid is None:
        form, new = storage(mats, cols), fit_layer(mats, cols, stats)
        undo.append(lambda: layer.store(mats, model, fresh))
        layer.store(new, model, fresh)
    else:
        form = "quantized"
        new = fit_on_grid(mats, cols, stats, (grid.scale, grid.zero, grid.low, grid.high))
        undo.append(lambda: grid.store(mats))
        grid.store(new)
    return LayerFit(
        layer.name,
        form,
        round(stats.error(mats), 6),
        round(stats.error(new), 6),
        round(time.perf_counter() - started, 3),
    )


def _fit_head(
    model: Model,
    head: Head,
    cfg: Config,
    data: Split,
    teacher: tuple[np.ndarray, np.ndarray],
    fresh: FreshNames,
    undo: list[Callable[[], None]],
) -> dict[str, Any] | str:
    """Fit the classifier to the teacher's softened outputs by gradient descent; the reason
    when it cannot be."""
    started = time.perf_counter()
    layer = head.layer
    source = layer.node.input[0]
    x_fit = patches(layer, joined(tensors(model.proto, model.base_dir, [source], data.fit), source))
    x_held = patches(
        layer, joined(tensors(model.proto, model.base_dir, [source], data.held), source)
    )
    mats = layer.matrices()
    classes = mats.shape[1]
    if x_fit.shape[1] != data.fit_count:
        return f"classifier: {x_fit.shape[1]} input rows for {data.fit_count} samples"
    if teacher[0].shape[1] != classes:
        return f"classifier: {classes} outputs, the teacher has {teacher[0].shape[1]} classes"
    cols = prunable_columns(layer, mats)
    form = storage(mats, cols)
    offset = np.broadcast_to(head.offset, (classes,))
    frozen = (mats[0] == 0) & cols if form == "pruned" else None
    result = kd_fit(
        mats[0],
        offset,
        HeadData(x_fit[0], teacher[0], data.fit_labels),
        HeadData(x_held[0], teacher[1], data.held_labels),
        KDOptions(cfg.temperature, cfg.alpha, cfg.steps),
        frozen,
    )
    w = result.w
    if form == "clustered":
        book = np.unique(mats[0][:, cols])
        w[:, cols] = np.where(mats[0][:, cols] == 0, 0.0, nearest(w[:, cols], book))
    undo.append(lambda: layer.store(mats, model, fresh))
    layer.store(w[None], model, fresh)
    return {
        "name": layer.name,
        "storage": form,
        "steps": result.steps,
        "best_step": result.best_step,
        "held_kl_checks": [round(v, 6) for v in result.held_kl],
        "seconds": round(time.perf_counter() - started, 3),
    }
