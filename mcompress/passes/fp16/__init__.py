"""`fp16`: store weights (and run what onnxruntime can) in float16 or bfloat16, without NaN/inf.

Weights are stored in half precision so the file halves. A node computes in half only where
that is safe and useful: with `compute: cpu` (default) only ops that onnxruntime's CPU provider
runs natively in half (see `ops`); every other node keeps float32 compute and reads its
weights through one Cast that onnxruntime folds at load, so speed and accuracy stay those of
float32. `compute: all` converts every op that has a half type (for GPU providers), and
`compute: none` converts storage only. Weights beyond the half range stay float32 (or are
clamped with `clamp: true`); `auto` runs the float32 model once and keeps nodes whose
activations would overflow or lose precision in float32. Planning and rewriting live in
`plan` / `rewrite`, the activation analysis in `auto`.

On onnxruntime's CPU provider (1.31) half compute buys nothing: ops without half kernels are
wrapped in Casts, and isolated half nodes (even those with kernels) are run in float32 with
their half weights fused back, so a fully converted model computes like float32 there, a bit
slower. That also hides overflow on CPU; it shows on providers that really compute in half
(GPUs), which is what `auto` protects.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field

from mcompress.errors import McompressError, PassError
from mcompress.model_io import Model, fill_tensor, is_external, read_array
from mcompress.passes.base import PassConfig, PassContext, PassResult
from mcompress.passes.fp16.auto import BFLOAT16_MAX, FLOAT16_MAX, Analysis, analyse, flags_from
from mcompress.passes.fp16.ops import BFLOAT16, DEFAULT_BLOCK_OPS, FLOAT, FLOAT16
from mcompress.passes.fp16.plan import Plan, Settings, Val
from mcompress.passes.fp16.rewrite import Rewriter
from mcompress.prepare import constants_to_initializers

summary = "Half-precision weights (float16/bfloat16) and compute where onnxruntime runs it."

# A float32 copy read through a Cast costs a node; below this many saved bytes keep float32.
_CAST_NODE_BYTES = 24


class Config(PassConfig):
    type: Literal["fp16"] = "fp16"
    dtype: Literal["float16", "bfloat16"] = Field(
        "float16",
        description="bfloat16 is storage-only on onnxruntime CPU: weights are cast to float32 "
        "at load",
    )
    compute: Literal["cpu", "all", "none"] = Field(
        "cpu",
        description="cpu: half compute only for ops onnxruntime's CPU provider runs in half, "
        "the rest in float32 from half weights; all: every op with a half type (GPU "
        "providers); none: storage only",
    )
    keep_io_types: bool = Field(True, description="keep model inputs/outputs float32")
    block_ops: tuple[str, ...] = Field(
        DEFAULT_BLOCK_OPS,
        description="op types kept in float32 (replaces the default list; empty blocks none)",
    )
    block_nodes: tuple[str, ...] = Field((), description="node names or globs kept in float32")
    auto: bool = Field(
        True,
        description="run the float32 model once (data, else random inputs) and keep nodes "
        "whose activations overflow half or lose precision in float32",
    )
    auto_samples: int = Field(8, ge=1, le=10_000, description="inputs for the auto analysis run")
    headroom: float = Field(
        2.0, ge=1.0, description="auto: keep activations with |x| > max_half / headroom"
    )
    max_rel_error: float = Field(
        0.005, gt=0.0, lt=1.0, description="auto: relative RMS rounding error allowed"
    )
    clamp: bool = Field(
        False, description="clamp weights beyond the half range instead of keeping them float32"
    )


def check(model: Model, cfg: Config) -> None:
    """Refuse bfloat16 below opset 13 and block_ops that name no operator."""
    opset = model.opset("")
    if cfg.dtype == "bfloat16" and opset < 13:
        raise PassError(
            f"dtype bfloat16 needs opset >= 13 (Cast to bfloat16); this model uses opset {opset}"
        )
    unknown = [op for op in cfg.block_ops if not onnx.defs.has(op)]
    used = {node.op_type for graph in model.graphs() for node in graph.node} if unknown else set()
    for op in unknown:
        if op not in used:
            raise PassError(f"block_ops: '{op}' is not an ONNX operator nor an op of this model")


@dataclass
class _WeightScan:
    half: np.ndarray | None  # kept for in-memory tensors; external ones are converted again
    out_of_range: int  # finite values beyond the half range (infinite in `half` unless clamped)
    in_range: bool  # `half` holds no new infinity
    underflow: int  # nonzero values that became zero
    nbytes: int


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Store weights in half, compute in half where planned, keep what is unsafe in float32."""
    half_type = FLOAT16 if cfg.dtype == "float16" else BFLOAT16
    constants_to_initializers(model)  # a no-op after `prepare`; needed with `prepare: false`
    scans = _scan_weights(model, half_type, cfg.clamp)
    compute = cfg.compute
    if half_type == BFLOAT16 and compute == "cpu":
        compute = "none"
    settings = Settings(
        half_type=half_type,
        compute=compute,
        keep_io_types=cfg.keep_io_types,
        block_ops=frozenset(cfg.block_ops),
        block_nodes=cfg.block_nodes,
        opset=model.opset(""),
        ir_version=model.proto.ir_version,
        weight_in_range={k: s.in_range for k, s in scans.items()},
    )
    plan = Plan(model.proto, settings)
    analysis = None
    if cfg.auto and plan.needs_analysis():
        analysis = _analyse(model, plan, cfg, ctx, half_type)
        settings.flags = flags_from(analysis.stats, half_type, cfg.headroom, cfg.max_rel_error)
        settings.analysed = set(analysis.stats)
        plan = Plan(model.proto, settings)
    weight_stats = _store_weights(model, plan, scans, cfg)
    rewriter = Rewriter(model.proto, plan)
    rewriter.apply()
    stats = _stats(cfg, compute, plan, weight_stats, rewriter.casts, analysis)
    notes = _notes(cfg, compute, plan, weight_stats, analysis)
    names = [n.name for graph in model.graphs() for n in graph.node] if cfg.block_nodes else []
    for pattern in cfg.block_nodes:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            notes.append(f"block_nodes: '{pattern}' matches no node name")
    modified = bool(weight_stats["converted"] or stats["nodes"]["half"] or rewriter.casts)
    return PassResult(modified=modified, stats=stats, notes=notes)


def _scan_weights(model: Model, half_type: int, clamp: bool) -> dict[tuple[int, str], _WeightScan]:
    """Half-precision copy of every float32 weight, with its out-of-range and underflow counts."""
    scans = {}
    for gidx, graph in enumerate(model.graphs()):
        for tensor in graph.initializer:
            if tensor.data_type != FLOAT:
                continue
            values = np.asarray(read_array(tensor, model.base_dir))
            half = _to_half(values, half_type)
            # Bit tests on the half values: numpy's float16 ufuncs are much slower.
            bits = half.reshape(-1).view(np.uint16)
            exponent = np.uint16(0x7C00 if half_type == FLOAT16 else 0x7F80)
            out_of_range = 0
            if np.any((bits & exponent) == exponent):  # some inf or NaN
                out_of_range = int(np.count_nonzero(np.isinf(half) & np.isfinite(values)))
            if clamp and out_of_range:
                limit = _half_max(half_type)
                half = _to_half(np.clip(values, -limit, limit), half_type)
                bits = half.reshape(-1).view(np.uint16)
            # Rounding never turns zero into nonzero, so the difference counts underflows.
            zeros = np.count_nonzero((bits & np.uint16(0x7FFF)) == 0)
            underflow = int(zeros - np.count_nonzero(values == 0))
            in_range = out_of_range == 0 or clamp
            kept = None if is_external(tensor) else half
            scans[(gidx, tensor.name)] = _WeightScan(
                kept, out_of_range, in_range, underflow, values.nbytes
            )
    return scans


def _half_max(half_type: int) -> float:
    return FLOAT16_MAX if half_type == FLOAT16 else BFLOAT16_MAX


def _to_half(values: np.ndarray, half_type: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        if half_type == FLOAT16:
            return values.astype(np.float16)
        import ml_dtypes

        return values.astype(ml_dtypes.bfloat16)


def _analyse(model: Model, plan: Plan, cfg: Config, ctx: PassContext, half_type: int) -> Analysis:
    """One float32 run (data from `ctx.data`, else seeded random inputs) with tensors exposed."""
    from mcompress.inputs import make_feeds

    ctx.progress("fp16: activation analysis", 0, 1)
    try:
        inputs = make_feeds(
            ctx.input_path,
            data=ctx.data,
            samples=cfg.auto_samples,
            seed=ctx.seed,
            input_shapes=ctx.input_shapes,
        )
    except McompressError as exc:
        if ctx.data is not None:
            raise
        return Analysis({}, [f"auto: no inputs could be made ({exc.message}); nothing analysed"])
    analysis = analyse(model, plan.float_values, inputs.feeds, half_type)
    source = "random inputs (pass --data for real ones)" if inputs.synthetic else str(ctx.data)
    analysis.notes.insert(0, f"auto: {len(inputs.feeds)} sample(s) from {source}")
    ctx.progress("fp16: activation analysis", 1, 1)
    return analysis


def _store_weights(
    model: Model, plan: Plan, scans: dict[tuple[int, str], _WeightScan], cfg: Config
) -> dict[str, Any]:
    """Choose each weight's storage, write the half ones; a float32 reader gets a folded Cast."""
    half_type = FLOAT16 if cfg.dtype == "float16" else BFLOAT16
    limit, clamp, base_dir = _half_max(half_type), cfg.clamp, model.base_dir
    kept: Counter[str] = Counter()
    totals = Counter(converted=0, bytes_before=0, bytes_after=0, underflow=0)
    out_of_range = {"tensors": 0, "values": 0}
    for val in plan.weights:
        scan = scans[val.key]
        reason = _keep_weight(val, scan)
        totals["bytes_before"] += scan.nbytes
        if scan.out_of_range:
            out_of_range["tensors"] += 1
            out_of_range["values"] += scan.out_of_range
        if reason:
            kept[reason] += 1
            totals["bytes_after"] += scan.nbytes
            continue
        tensor = val.weight
        if tensor is None:
            continue
        val.half = True
        if "full" in val.reads:
            val.fixed_half = False
        half = scan.half
        if half is None:  # external data: convert again, one tensor at a time
            values = read_array(tensor, base_dir)
            half = _to_half(np.clip(values, -limit, limit) if clamp else values, half_type)
        fill_tensor(tensor, half, tensor.name, spill_ok=True)
        scan.half = None
        totals["converted"] += 1
        totals["bytes_after"] += scan.nbytes // 2
        totals["underflow"] += scan.underflow
    return {
        "converted": totals["converted"],
        "kept_float32": dict(kept),
        "bytes_before": totals["bytes_before"],
        "bytes_after": totals["bytes_after"],
        "out_of_range": out_of_range,
        "underflow_to_zero": totals["underflow"],
        "dtype": onnx.helper.tensor_dtype_to_string(half_type).split(".")[-1].lower(),
    }


def _keep_weight(val: Val, scan: _WeightScan) -> str:
    """Why a float32 weight keeps float32 storage ('' when it is stored in half)."""
    if not val.reads:
        return "unused"
    if val.is_input:
        return "overridable_input"
    if not scan.in_range:
        return "out_of_range"
    if "exact" in val.reads:
        return "exact_value_needed"
    saved = scan.nbytes // 2
    if "half" not in val.reads and saved <= _CAST_NODE_BYTES + 2 * len(val.name) + 10:
        return "too_small_for_a_cast"
    return ""


def _stats(
    cfg: Config,
    compute: str,
    plan: Plan,
    weights: dict[str, Any],
    casts: int,
    analysis: Analysis | None,
) -> dict[str, Any]:
    decisions = list(plan.float_decisions())
    half = [d for d in decisions if d.half]
    kept = [
        {
            "node": d.label,
            "op": d.node.op_type,
            "reason": d.reason,
            "tensor": d.flag[0],
            "max_abs": float(f"{d.flag[1].max_abs:.6g}"),
            "rel_error": float(f"{d.flag[1].rel_error:.3g}"),
        }
        for d in decisions
        if d.flag is not None
    ]
    auto: dict[str, Any] = {"enabled": cfg.auto, "ran": analysis is not None}
    if analysis is not None:
        auto.update(tensors_analysed=len(analysis.stats), runs=analysis.runs, kept=len(kept))
    return {
        "dtype": cfg.dtype,
        "compute": compute,
        "keep_io_types": cfg.keep_io_types,
        "nodes": {
            "float": len(decisions),
            "half": len(half),
            "float32": len(decisions) - len(half),
            "half_ops": dict(Counter(d.node.op_type for d in half).most_common()),
            "float32_reasons": dict(Counter(d.reason for d in decisions if not d.half)),
        },
        "kept_nodes": kept,
        "weights": weights,
        "casts_added": casts,
        "auto": auto,
    }


def _notes(
    cfg: Config,
    compute: str,
    plan: Plan,
    weights: dict[str, Any],
    analysis: Analysis | None,
) -> list[str]:
    notes = []
    decisions = list(plan.float_decisions())
    if cfg.dtype == "bfloat16" and compute == "none" and cfg.compute == "cpu":
        notes.append(
            "bfloat16 is storage-only: onnxruntime's CPU provider has no bfloat16 compute "
            "kernels, so weights are stored as bfloat16 and cast to float32 at load; all "
            "computation stays float32"
        )
    elif cfg.dtype == "bfloat16" and compute == "all":
        notes.append(
            "compute: all with bfloat16: onnxruntime's CPU provider cannot run bfloat16 compute "
            "ops (NOT_IMPLEMENTED); this model needs a provider with bfloat16 kernels"
        )
    no_kernel = Counter(d.node.op_type for d in decisions if d.reason == "no_cpu_kernel")
    if no_kernel:
        ops = ", ".join(op for op, _ in no_kernel.most_common(8))
        notes.append(
            f"onnxruntime's CPU provider has no float16 kernel for {ops}"
            f"{', ...' if len(no_kernel) > 8 else ''} ({sum(no_kernel.values())} nodes): they "
            "compute in float32 from float16-stored weights (file halved, float32 speed and "
            "accuracy); compute: all converts them too (for GPU providers)"
        )
    ranged = weights["out_of_range"]
    if ranged["tensors"]:
        limit = f"+-{FLOAT16_MAX:g}" if cfg.dtype == "float16" else "the bfloat16 range"
        action = "clamped" if cfg.clamp else "kept float32 (clamp: true clamps them)"
        notes.append(
            f"{ranged['tensors']} weight tensor(s) hold {ranged['values']} value(s) beyond "
            f"{limit}: {action}"
        )
    if weights["underflow_to_zero"]:
        notes.append(
            f"{weights['underflow_to_zero']} nonzero weight value(s) underflow to zero in "
            f"{cfg.dtype}"
        )
    if analysis is not None:
        notes.extend(analysis.notes)
        flagged = [d for d in decisions if d.flag is not None]
        if flagged:
            shown = ", ".join(
                f"{d.label} ({d.reason}, max |x| {d.flag[1].max_abs:.3g})"
                for d in flagged[:5]
                if d.flag is not None
            )
            more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
            notes.append(f"auto kept {len(flagged)} node(s) in float32: {shown}{more}")
    return notes
