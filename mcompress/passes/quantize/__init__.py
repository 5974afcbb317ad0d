"""`quantize`: int8 (dynamic, static or weight-only) and 4-bit block-wise weight quantization.

Per op it writes what stock onnxruntime runs correctly and fast on CPU (measured: the figures
and versions are in benchmarks/README.md):
- MatMul with a constant 2-D weight in the main graph, and Gemm computing `A @ B (+ C)` (how
  PyTorch exports nn.Linear): dynamic int8, the graph onnxruntime's `quantize_dynamic` writes
  for MatMul (MatMulInteger, fused to DynamicQuantizeMatMul at load, several times faster than
  float), written by `quantize_matmul` because `quantize_dynamic` quantizes per-channel
  weights one column at a time in Python (several times slower end to end, see
  benchmarks/bench_quantize.py) and leaves Gemm float.
- everything else with a weight (Conv, ConvTranspose, other Gemms, LSTM/GRU/RNN, `Gather`,
  weights read inside If/Loop/Scan bodies): int8 weight-only storage (`quantize_weights`),
  because ConvInteger runs slower than float Conv and onnxruntime's quantizers do not
  reach Gemm or outer-scope weights.
- `mode: static`: onnxruntime `quantize_static` (QDQ or QOperator) calibrated on data; the
  opset is raised to 13 when per-channel QDQ needs it. Weights it leaves float are stored
  weight-only.
- `bits: 4`: onnxruntime's MatMulNBits quantizer (MatMul -> MatMulNBits, Gather ->
  GatherBlockQuantized, both com.microsoft ops in stock onnxruntime); other weights stay int8,
  and so do Gather tables under recovery (`recovered.holds_tables`).

Dynamic and weight-only int8 are rewritten in memory. onnxruntime's static and 4-bit quantizers
work on files, so the pass runs them on a temporary copy. Before a result is kept, onnxruntime
must load it and run it once on random inputs; when it cannot, dynamic and 4-bit results fall
back to weight-only int8 (noted), static ones fail.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from mcompress import model_io
from mcompress.compact_names import compact_names
from mcompress.errors import McompressError, PassError
from mcompress.graph import FreshNames, iter_graphs, model_names, temporary_node_names
from mcompress.model_io import Model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.quantize import matmul as quantize_matmul
from mcompress.passes.quantize import ort as quantize_ort
from mcompress.passes.quantize import recovered
from mcompress.passes.quantize import static as quantize_static
from mcompress.passes.quantize.config import Config
from mcompress.passes.quantize.weights import (
    Target,
    find_targets,
    raise_opset_for_rewrite,
    rewrite_all,
)
from mcompress.runtime import error_line

summary = "int8 dynamic/static or 4-bit block-wise weight quantization (onnxruntime.quantization)."

# Tensors above this many bytes are left on disk (external data) instead of read into memory.
IN_MEMORY_LIMIT = model_io.PROTOBUF_LIMIT - 2**26
WORST = 5
# Prefix of the temporary names given to unnamed nodes (onnxruntime selects nodes by name).
_ADDED = "mcompress_quantize/"
_CANDIDATE = "candidate.onnx"


def check(model: Model, cfg: Config) -> None:
    """Refuse option combinations that cannot work, before anything runs."""
    if cfg.bits == 4 and cfg.mode == "static":
        raise PassError(
            "bits: 4 is block-wise weight-only quantization and cannot be static",
            "use mode: weight-only (or dynamic) with bits: 4, or bits: 8 with mode: static",
        )
    if "format" in cfg.model_fields_set and cfg.mode != "static":
        raise PassError(f"format applies to mode: static only (mode is {cfg.mode})")
    if cfg.calibration not in (None, "random") and not Path(str(cfg.calibration)).exists():
        raise PassError(
            f"calibration data '{cfg.calibration}' does not exist",
            "give an .npz keyed by input names, a folder of them, or calibration: random",
        )


@dataclass
class _Step:
    """What onnxruntime.quantization is asked to do: which quantizer, on which nodes."""

    kind: Literal["dynamic", "static", "nbits"]
    nodes: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    opset: dict[str, int] | None = None


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Quantize `model` in place; stats list each weight's error, worst first."""
    calibration = quantize_static.calibration_source(cfg, ctx)
    targets = find_targets(model.proto, cfg.exclude)
    if cfg.mode != "static" and not targets:
        return PassResult(False, {"weights_quantized": 0}, ["no float32 weights to quantize"])
    ctx.progress("quantize", 0, 3)
    with temporary_node_names(model.proto, FreshNames(model.proto), _ADDED):
        recovery, recovery_notes = recovered.pre_round(model, cfg, ctx, targets)
        upgrade = None if cfg.mode == "static" else raise_opset_for_rewrite(model)
        step, notes = plan_step(model, cfg, targets)
        notes = [*recovery_notes, *notes]
        if upgrade is not None:
            notes.append(
                f"opset raised from {upgrade['from']} to {upgrade['to']}: int8 weights are "
                f"rebuilt with Mul, which onnxruntime runs from opset {upgrade['to']}"
            )
        step, first = _int4_matmuls(model, step, cfg)
        if step is None or step.kind == "dynamic":
            outcome = _in_memory(model, step, cfg, ctx)
        else:
            outcome = _with_onnxruntime(model, step, cfg, ctx, calibration)
        outcome.rows[:0] = first
    ctx.progress("quantize", 3, 3)
    outcome.opset = outcome.opset or upgrade
    stats = _stats(cfg, outcome)
    if recovery is not None:
        stats["recovery"] = recovery
    return PassResult(bool(outcome.rows), stats, [*notes, *outcome.notes])


def _int4_matmuls(
    model: Model, step: _Step | None, cfg: Config
) -> tuple[_Step | None, list[dict[str, Any]]]:
    """4-bit dynamic with symmetric weights: MatMuls get 4-bit storage run as int8 (faster
    than MatMulNBits on x86, see `int4_storage`). Alone, they become the in-memory
    dynamic step; next to Gathers they are rewritten now (rows returned) and the Gathers
    stay for onnxruntime's 4-bit quantizer."""
    if (
        step is None
        or step.kind != "nbits"
        or cfg.mode != "dynamic"
        or not cfg.weights_symmetric
        or model.opset() < quantize_matmul.MIN_OPSET
    ):
        return step, []
    planned = set(step.nodes)
    main = model.proto.graph.node
    matmuls = {n.name for n in main if n.name in planned and n.op_type == "MatMul"}
    gathers = [name for name in step.nodes if name not in matmuls]
    if not gathers:
        return _Step("dynamic", step.nodes), []
    if not matmuls:
        return step, []
    rewritten = quantize_matmul.rewrite(
        model.proto,
        matmuls,
        model.base_dir,
        per_channel=True,
        symmetric=True,
        block_size=cfg.block_size,
    )
    return _Step("nbits", gathers), rewritten.rows


def _in_memory(model: Model, step: _Step | None, cfg: Config, ctx: PassContext) -> _Outcome:
    """Dynamic MatMul and weight-only int8, both written by mcompress, in memory.

    Before the model is kept, onnxruntime must load and run it once; a dynamic result it
    cannot run falls back to weight-only int8 (noted).
    """
    dynamic = None
    if step is not None:
        dynamic = quantize_matmul.rewrite(
            model.proto,
            set(step.nodes),
            model.base_dir,
            per_channel=cfg.per_channel,
            symmetric=cfg.weights_symmetric,
            block_size=cfg.block_size if cfg.bits == 4 else None,
        )
    weight_only = _weight_only(model.proto, model.base_dir, cfg)
    outcome = _Outcome([*(dynamic.rows if dynamic else []), *weight_only])
    outcome.notes.extend(_int8_note(weight_only, cfg))
    ctx.progress("quantize", 2, 3)
    problem = quantize_ort.model_runs_once(model, ctx.input_path, ctx.seed, ctx.input_shapes)
    if problem and dynamic is not None and step is not None:
        dynamic.undo(model.proto.graph)
        weight_only.extend(_weight_only(model.proto, model.base_dir, cfg))
        outcome = _Outcome(weight_only, [_fallback_note(step, problem)])
        problem = quantize_ort.model_runs_once(model, ctx.input_path, ctx.seed, ctx.input_shapes)
    if problem:
        raise _does_not_run(problem)
    return outcome


def _weight_only(proto: onnx.ModelProto, base_dir: Path, cfg: Config) -> list[dict[str, Any]]:
    """int8 weight-only storage of every float weight still in `proto`."""
    return rewrite_all(
        proto,
        find_targets(proto, cfg.exclude),
        base_dir,
        per_channel=cfg.per_channel,
        symmetric=cfg.weights_symmetric,
    )


def _int8_note(rows: list[dict[str, Any]], cfg: Config) -> list[str]:
    """With bits: 4, the weights stored int8 because onnxruntime has no 4-bit kernel for them
    (tables recovery holds at int8 have their own note)."""
    held = recovered.holds_tables(cfg)
    names = [r["name"] for r in rows if not (held and r["method"] == "weight-only gather")]
    if cfg.bits != 4 or not names:
        return []
    return [
        f"{len(names)} weights (e.g. '{names[0]}') stored as int8: stock onnxruntime has 4-bit "
        "kernels only for MatMul and Gather"
    ]


def _fallback_note(step: _Step, problem: str) -> str:
    return (
        f"onnxruntime cannot use the {_describe(step)} model ({problem}); "
        "stored the weights as int8 weight-only instead"
    )


def _does_not_run(problem: str) -> PassError:
    return PassError(
        f"the quantized model does not run in onnxruntime: {problem}",
        "keep the failing node in float with exclude: [NODE_NAME or OP_TYPE]",
    )


def _with_onnxruntime(
    model: Model,
    step: _Step,
    cfg: Config,
    ctx: PassContext,
    calibration: quantize_static.Calibration | None,
) -> _Outcome:
    """Static or 4-bit: onnxruntime's quantizers, which work on files, on a temporary copy."""
    tmp = tempfile.TemporaryDirectory(prefix="mcompress-quantize-")
    keep = False
    try:
        work = Path(tmp.name)
        _working_copy(model, work)
        outcome, problem = _try(work, step, cfg, ctx, calibration)
        ctx.progress("quantize", 2, 3)
        if problem and step.kind != "static":
            outcome, fallback_problem = _try(work, None, cfg, ctx, calibration)
            outcome.notes.insert(0, _fallback_note(step, problem))
            problem = fallback_problem
        if problem:
            raise _does_not_run(problem)
        keep = _install(model, work / _CANDIDATE)
        if keep:
            model.base_dir = work
            setattr(model, "_quantize_tmp", tmp)  # noqa: B010 - keeps external data alive
    finally:
        if not keep:
            tmp.cleanup()
    return outcome


def _try(
    work: Path,
    step: _Step | None,
    cfg: Config,
    ctx: PassContext,
    calibration: quantize_static.Calibration | None,
) -> tuple[_Outcome, str | None]:
    """Quantize, then check that onnxruntime runs the result: (outcome, its problem or None).

    A failure of onnxruntime's 4-bit quantizer is a problem to fall back from; a static one
    (or bad calibration data) stops the pass.
    """
    try:
        outcome = _attempt(work, step, cfg, ctx, calibration)
    except PassError as exc:
        if step is None or step.kind == "static":
            raise
        return _Outcome(), exc.message
    candidate, src = work / _CANDIDATE, work / "src.onnx"
    # Inputs are made for the model before quantization: token ids stay within its Gather
    # tables, which a GatherBlockQuantized in the candidate would hide.
    problem = quantize_ort.runs_once(candidate, src, src, ctx.seed, ctx.input_shapes)
    return outcome, problem


def _working_copy(model: Model, work: Path) -> None:
    """Save the model to `work/src.onnx` for onnxruntime's quantizers.

    The weights move to an external data file there, so the proto in memory stays small and
    the originals can be memory-mapped for error stats. Until `_install`, the model reads its
    weights from that temporary folder; a failing pass stops the pipeline, so nothing else
    sees it in between.
    """
    # Stale value_info makes onnxruntime's shape inference fail ("Inferred shape and existing
    # shape differ"); it re-infers what it needs.
    for graph in iter_graphs(model.proto.graph):
        del graph.value_info[:]
    on_disk = Model(model.proto, model.path, model.base_dir, model.had_external_data)
    model_io.save_model(on_disk, work / "src.onnx", external=True)
    model.base_dir = work


def plan_step(model: Model, cfg: Config, found: list[Target]) -> tuple[_Step | None, list[str]]:
    """The quantizer and nodes for this config (None: weight-only storage only), and notes;
    `found` are the model's quantizable weights."""
    if cfg.mode == "static":
        return _Step("static"), []
    if cfg.mode == "weight-only" and cfg.bits == 8:
        return None, []
    targets = {t.name: t for t in found}
    main = {t.name for t in model.proto.graph.initializer}
    nodes = []
    for node in model.proto.graph.node:
        matmul = node.op_type == "MatMul" and len(node.input) == 2
        if matmul or (cfg.bits == 8 and quantize_matmul.plain_gemm(node)):
            target = targets.get(node.input[1])
            fits = target is not None and len(target.tensor.dims) == 2
        elif node.op_type == "Gather" and cfg.bits == 4 and not recovered.holds_tables(cfg):
            target = targets.get(node.input[0])
            fits = target is not None and target.gathered_rows and len(target.tensor.dims) == 2
        else:
            continue
        if fits and target is not None and target.name in main and _main_graph_only(target):
            nodes.append(node.name)
    if not nodes:
        return None, []
    if cfg.bits == 8 and model.opset() < quantize_matmul.MIN_OPSET:
        return None, [
            f"opset {model.opset()} has no DynamicQuantizeLinear (opset "
            f"{quantize_matmul.MIN_OPSET}): MatMul weights stored as int8 weight-only"
        ]
    return _Step("nbits" if cfg.bits == 4 else "dynamic", nodes), []


def _main_graph_only(target: Target) -> bool:
    """Read only by main-graph nodes, all at the same input of one op type, so the whole
    tensor can be replaced."""
    kinds = {(u.node.op_type, u.slot) for u in target.uses}
    return len(kinds) == 1 and all(u.in_main for u in target.uses)


def _attempt(
    work: Path,
    step: _Step | None,
    cfg: Config,
    ctx: PassContext,
    calibration: quantize_static.Calibration | None,
) -> _Outcome:
    """Quantize `work/src.onnx` (onnxruntime step, then weight-only for the rest) to a file."""
    src = work / "src.onnx"
    proto = onnx.load(str(src), load_external_data=False)
    before = model_names(proto)
    outcome = _Outcome()
    if step is not None:
        originals = {t.name: (t.tensor, t.axis) for t in find_targets(proto, cfg.exclude)}
        staged = _run_onnxruntime(work, step, cfg, ctx, calibration, outcome)
        proto = onnx.load(str(staged), load_external_data=False)
        outcome.rows.extend(quantize_ort.ort_weight_stats(proto, work, originals, work))
        for graph in iter_graphs(proto.graph):
            # onnxruntime writes inferred shapes of every tensor (~20 KB on a small CNN).
            del graph.value_info[:]
    leftovers = find_targets(proto, cfg.exclude)
    if leftovers and step is not None and step.kind == "static":
        outcome.notes.append(
            f"{len(leftovers)} weights onnxruntime's static quantizer left in float (e.g. "
            f"'{leftovers[0].name}': inside If/Loop/Scan bodies or ops it does not quantize) "
            "stored as int8 weight-only; activations there stay float"
        )
    rows = rewrite_all(
        proto, leftovers, work, per_channel=cfg.per_channel, symmetric=cfg.weights_symmetric
    )
    outcome.notes.extend(_int8_note(rows, cfg))
    outcome.rows.extend(rows)
    # onnxruntime's names for what it adds were a third of a static QDQ CNN's file
    compact_names(proto, before)
    result = Model(proto, src, work, True)
    external = model_io.tensor_bytes(proto) > IN_MEMORY_LIMIT
    outcome.notes.extend(model_io.save_model(result, work / _CANDIDATE, external=external))
    return outcome


def _run_onnxruntime(
    work: Path,
    step: _Step,
    cfg: Config,
    ctx: PassContext,
    calibration: quantize_static.Calibration | None,
    outcome: _Outcome,
) -> Path:
    """Run the planned onnxruntime quantizer on `work/src.onnx`; return its output file."""
    src, staged = work / "src.onnx", work / "onnxruntime.onnx"
    try:
        if step.kind == "nbits":
            quantize_ort.nbits(
                src,
                staged,
                set(step.nodes),
                block_size=cfg.block_size,
                symmetric=cfg.weights_symmetric,
                accuracy_level=4 if cfg.mode == "dynamic" else None,
            )
        elif calibration is not None:
            static = quantize_static.run(work, cfg, ctx, calibration)
            outcome.calibration, outcome.opset = static.calibration, static.opset
            outcome.notes.extend(static.notes)
    except McompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; report its words
        raise PassError(
            f"onnxruntime.quantization failed on this model: {error_line(exc)}",
            "keep the failing node in float with exclude: [NODE_NAME or OP_TYPE], "
            "or use mode: weight-only",
        ) from None
    return staged


def _install(model: Model, path: Path) -> bool:
    """Replace the model's proto with the file's; True when its data must stay on disk."""
    proto = onnx.load(str(path), load_external_data=False)
    external = any(model_io.is_external(t) for g in iter_graphs(proto.graph) for t in g.initializer)
    if external and model_io.tensor_bytes(proto) <= IN_MEMORY_LIMIT:
        onnx.load_external_data_for_model(proto, str(path.parent))
        external = False
    model.proto.CopyFrom(proto)
    return external


def _stats(cfg: Config, outcome: _Outcome) -> dict[str, Any]:
    rows = sorted(outcome.rows, key=lambda r: (r["sqnr_db"], -r["bytes_before"]))
    stats: dict[str, Any] = {
        "mode": cfg.mode,
        "bits": cfg.bits,
        "per_channel": cfg.per_channel,
        "weights_symmetric": cfg.weights_symmetric,
        "weights_quantized": len(rows),
        "bytes_before": sum(r["bytes_before"] for r in rows),
        "bytes_after": sum(r["bytes_after"] for r in rows),
        "methods": dict(Counter(r["method"] for r in rows)),
        "worst": [{"name": r["name"], "sqnr_db": round(r["sqnr_db"], 2)} for r in rows[:WORST]],
        "tensors": rows,
    }
    if cfg.mode == "static":
        stats["format"] = cfg.format
        stats["activations_symmetric"] = cfg.activations_symmetric
    if outcome.calibration is not None:
        stats["calibration"] = outcome.calibration
    if outcome.opset is not None:
        stats["opset_upgrade"] = outcome.opset
    return stats


def _describe(step: _Step) -> str:
    return "4-bit" if step.kind == "nbits" else f"{step.kind} int8"
