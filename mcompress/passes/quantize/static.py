"""`quantize` in `mode: static`: calibration data, the opset it needs, onnxruntime's run.

Per-channel QDQ writes DequantizeLinear with an `axis`, which only exists from opset 13: older
models are converted first (onnx.version_converter, and only as far as the installed
onnxruntime supports); onnxruntime.quantization alone writes a model it then rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from mcompress import model_io
from mcompress.errors import PassError
from mcompress.graph import iter_graphs, node_excluded
from mcompress.passes.base import PassContext
from mcompress.passes.quantize import ort as quantize_ort
from mcompress.passes.quantize.config import Config
from mcompress.runtime import error_line

# Per-channel DequantizeLinear (the `axis` attribute) arrived in opset 13.
PER_CHANNEL_QDQ_OPSET = 13

Calibration = Path | Literal["random"]


@dataclass
class StaticRun:
    """What the report needs from a static run."""

    calibration: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    opset: dict[str, int] | None = None


def calibration_source(cfg: Config, ctx: PassContext) -> Calibration | None:
    """Where static calibration data comes from; static without any data is an error.

    `calibration:` wins, then the pipeline's `--data`; `calibration: random` must be explicit.
    """
    if cfg.mode != "static":
        return None
    if cfg.calibration == "random":
        return "random"
    if cfg.calibration is not None:
        return Path(cfg.calibration)
    if ctx.data is not None:
        return ctx.data
    raise PassError(
        "mode: static needs calibration data to measure activation ranges",
        "pass --data FILE.npz (or a folder of .npz), set calibration: PATH, or set "
        "calibration: random to calibrate on synthetic inputs (less accurate)",
    )


def run(work: Path, cfg: Config, ctx: PassContext, calibration: Calibration) -> StaticRun:
    """Calibrate and quantize `work/src.onnx` into `work/onnxruntime.onnx`."""
    from mcompress.inputs import make_feeds

    src = work / "src.onnx"
    proto = onnx.load(str(src), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    notes: list[str] = []
    upgrade = None
    if cfg.per_channel and cfg.format == "qdq" and opset < PER_CHANNEL_QDQ_OPSET:
        src = _upgrade_opset(proto, work, opset)
        upgrade = {"from": opset, "to": PER_CHANNEL_QDQ_OPSET}
        notes.append(
            f"opset upgraded from {opset} to {PER_CHANNEL_QDQ_OPSET}: per-channel QDQ needs "
            "DequantizeLinear's axis"
        )
    feeds = make_feeds(
        src,
        data=None if calibration == "random" else Path(calibration),
        samples=cfg.calibration_samples,
        seed=ctx.seed,
        input_shapes=ctx.input_shapes,
    )
    excluded = [
        n.name for g in iter_graphs(proto.graph) for n in g.node if node_excluded(n, cfg.exclude)
    ]
    ranges = quantize_ort.static(
        src,
        work / "onnxruntime.onnx",
        feeds.feeds,
        quant_format=cfg.format,
        per_channel=cfg.per_channel,
        weight_symmetric=cfg.weights_symmetric,
        activation_symmetric=cfg.activations_symmetric,
        method=cfg.calibration_method,
        exclude=excluded,
        cache=work / "calibration.json",
    )
    if feeds.synthetic:
        notes.append("static calibration used synthetic random inputs (calibration: random)")
    notes += [f"calibration {note}" for note in feeds.description.get("notes", [])]
    summary = {
        "synthetic": feeds.synthetic,
        "source": "random" if calibration == "random" else str(calibration),
        "samples": len(feeds.feeds),
        "method": cfg.calibration_method,
        "ranges": ranges,
    }
    return StaticRun(summary, notes, upgrade)


def _upgrade_opset(proto: onnx.ModelProto, work: Path, opset: int) -> Path:
    """Convert to opset 13 next to the source (its external data stays shared)."""
    from onnx import version_converter

    if model_io.max_opset() < PER_CHANNEL_QDQ_OPSET:
        raise PassError(
            f"per-channel QDQ needs opset {PER_CHANNEL_QDQ_OPSET}; the installed onnxruntime "
            f"supports up to {model_io.max_opset()}",
            "use per_channel: false or format: qoperator",
        )
    try:
        converted = version_converter.convert_version(proto, PER_CHANNEL_QDQ_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        raise PassError(
            f"cannot upgrade opset {opset} to {PER_CHANNEL_QDQ_OPSET} for per-channel QDQ: "
            f"{error_line(exc)}",
            "use per_channel: false or format: qoperator",
        ) from None
    path = work / f"src_opset{PER_CHANNEL_QDQ_OPSET}.onnx"
    onnx.save_model(converted, str(path))
    return path
