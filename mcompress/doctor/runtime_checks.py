"""Doctor checks of the file, onnxruntime, the config, the inputs and the data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from mcompress import inputs, model_io, runtime
from mcompress.doctor.findings import Context, Finding
from mcompress.doctor.model_checks import FLOAT16_MAX
from mcompress.errors import McompressError
from mcompress.passes import PASSES
from mcompress.passes.base import check_pass
from mcompress.render_terminal import human_bytes
from mcompress.runtime import error_line

TWO_GB = 2**31
# At most this many samples of --data are run for the activation range check.
ACTIVATION_SAMPLES = 8
# Models above this size are not loaded into memory for the activation check.
ACTIVATION_MAX_BYTES = 1_500_000_000


# ---------------------------------------------------------------- file and runtime


def check_size(ctx: Context) -> Iterator[Finding]:
    size = model_io.disk_size(ctx.path)
    files = model_io.data_files(ctx.path)
    if size > TWO_GB:
        yield Finding(
            "warning",
            "size",
            f"the model is {human_bytes(size)}, over the 2 GB protobuf limit: outputs are "
            "written with external data (OUT.onnx plus OUT.onnx.data)",
            "keep each output .onnx and its .data file together when copying or uploading",
        )
    if len(files) > 1:
        yield Finding(
            "note",
            "external-data",
            f"weights are spread over {len(files)} external data files; outputs use one",
            "nothing to do",
        )
    elif files and size <= TWO_GB:
        yield Finding(
            "note",
            "external-data",
            f"weights live in the external file '{files[0].name}'; outputs keep external data",
            "keep the output's .data file next to it",
        )


def check_runtime(ctx: Context) -> Iterator[Finding]:
    proto = ctx.model.proto
    opset = ctx.model.opset("")
    if opset > model_io.max_opset():
        yield Finding(
            "problem",
            "opset",
            f"opset {opset} is newer than the installed onnxruntime supports "
            f"({model_io.max_opset()}); no output can be written",
            "upgrade onnxruntime (pip install -U onnxruntime)",
        )
        return
    if proto.ir_version > model_io.max_ir_version():
        yield Finding(
            "note",
            "ir-version",
            f"IR version {proto.ir_version} is newer than onnxruntime loads; outputs are "
            f"written with IR version {model_io.max_ir_version()}",
            "nothing to do",
        )
    validating = ctx.cfg is None or (ctx.cfg.validation.enabled and bool(ctx.cfg.passes))
    if validating:
        error = _session_error(ctx.path)
        if error:
            yield Finding(
                "problem",
                "onnxruntime",
                f"onnxruntime cannot load the original model: {error}",
                "validation runs the original; fix the export, or pass --no-validate",
            )


def _session_error(path: Path) -> str | None:
    try:
        runtime.session(path)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one finding
        return error_line(exc, 200)
    return None


def check_config(ctx: Context) -> Iterator[Finding]:
    """Each pass's own `check` on this model: exactly what would stop the run."""
    if ctx.cfg is None:
        return
    for pass_cfg in ctx.cfg.passes:
        try:
            check_pass(PASSES[pass_cfg.type], ctx.model, pass_cfg)
        except McompressError as exc:
            yield Finding(
                "problem",
                f"pass-{pass_cfg.type}",
                f"pass '{pass_cfg.type}' cannot run on this model: {exc.message}",
                exc.hint or f"change or remove the '{pass_cfg.type}' pass in the config",
            )


# ---------------------------------------------------------------- inputs and data


def check_inputs(ctx: Context) -> Iterator[Finding]:
    """Data that does not fit the model fails validation; unpinned dynamic dims are guessed."""
    if ctx.cfg is not None and not ctx.cfg.validation.enabled and not ctx.data:
        return
    if ctx.data is not None:
        try:
            made = inputs.make_feeds(
                ctx.path, data=ctx.data, samples=1, seed=0, input_shapes=ctx.input_shapes
            )
        except McompressError as exc:
            yield Finding(
                "problem",
                "data",
                exc.message,
                exc.hint or "pass an .npz keyed by input names, first axis = samples",
            )
            return
        for note in made.description.get("notes", []):
            yield Finding("note", "data", note, "nothing to do: only model inputs are read")
        return
    from mcompress.inputs import facts, shapes

    model_inputs = facts.graph_inputs(ctx.model.proto)
    resolved, guessed, _ = shapes.resolve(ctx.model, model_inputs, ctx.input_shapes)
    for inp in model_inputs:
        loose = guessed.get(inp.name)
        if not loose:
            continue
        where = ", ".join(f"{i} ('{inp.dims[i] or '?'}')" for i in loose)
        example = "x".join(
            _placeholder(i, inp.dims[i]) if i in loose else str(size)
            for i, size in enumerate(resolved[inp.name])
        )
        yield Finding(
            "warning",
            "dynamic-dims",
            f"input '{inp.name}' has dynamic dimension(s) {where} that neither data nor the "
            "model pins; random validation and calibration guess their size",
            f"pass --data FILE with real inputs, or --input-shape {inp.name}={example} "
            "with the sizes you deploy with",
        )


def _placeholder(index: int, dim: int | str | None) -> str:
    name = dim if isinstance(dim, str) and dim.isidentifier() else f"d{index}"
    return f"<{name}>"


def check_activations(ctx: Context) -> Iterator[Finding]:
    """With data: run the model once with intermediates exposed; find float16 overflows."""
    if ctx.data is None or not ctx.uses("fp16"):
        return
    try:
        feeds = inputs.make_feeds(
            ctx.path,
            data=ctx.data,
            samples=ACTIVATION_SAMPLES,
            seed=0,
            input_shapes=ctx.input_shapes,
        ).feeds
    except McompressError:
        return  # reported by the input check
    if model_io.disk_size(ctx.path) > ACTIVATION_MAX_BYTES:
        yield Finding(
            "note",
            "activations",
            "activation ranges not checked: the model is too large to copy in memory",
            "use fp16 with auto: true, which checks activations while converting",
        )
        return
    peaks, producers, error = _activation_peaks(ctx.model, feeds)
    if error:
        yield Finding(
            "note",
            "activations",
            f"activation ranges not checked: onnxruntime could not run the model ({error})",
            "check the data with mcompress validate MODEL MODEL --data FILE",
        )
        return
    over = sorted(
        ((name, peak) for name, peak in peaks.items() if peak > FLOAT16_MAX),
        key=lambda item: -item[1],
    )
    if not over:
        return
    auto = any(getattr(p, "auto", False) for p in ctx.pass_configs("fp16"))
    listed = ", ".join(
        f"'{producers.get(n, n)}' ({'inf/nan' if not np.isfinite(p) else f'{p:.3g}'})"
        for n, p in over[:5]
    )
    more = f" and {len(over) - 5} more" if len(over) > 5 else ""
    yield Finding(
        "note" if auto else "warning",
        "activations",
        f"{len(over)} activation(s) exceed the float16 range on this data: {listed}{more}",
        "fp16 auto: true keeps these nodes in float32"
        if auto
        else "use {type: fp16, auto: true} (or block these nodes), or stay in float32/int8",
    )


def _activation_peaks(
    model: model_io.Model, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, float], dict[str, str], str | None]:
    """Max |value| of every float intermediate of the main graph over `feeds`."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    existing = {o.name for o in proto.graph.output}
    producers: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            producers[out] = node.name or f"{node.op_type}:{out}"
            if out and out not in existing:
                proto.graph.output.append(onnx.ValueInfoProto(name=out))
                existing.add(out)
    try:
        session = runtime.session(proto, optimize=False, external_folder=model.base_dir)
        names = [o.name for o in session.get_outputs()]
        peaks: dict[str, float] = {}
        for feed in feeds:
            for name, value in zip(names, session.run(names, feed), strict=True):
                array = np.asarray(value)
                if array.dtype.kind != "f" or not array.size:
                    continue
                finite = np.isfinite(array).all()
                peak = float(np.abs(array).max()) if finite else float("inf")
                peaks[name] = max(peaks.get(name, 0.0), peak)
    except Exception as exc:  # noqa: BLE001 - any failure means: not checked, say why
        return {}, producers, error_line(exc, 200)
    return peaks, producers, None
