"""Feeds from a user's `.npz` data: arrays keyed by input name (first axis = samples), an
optional `labels` array, checked against the model's names, dtypes and shapes."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mcompress import model_io
from mcompress.errors import DataError
from mcompress.inputs.facts import (
    BATCH_NAMES,
    InputSet,
    ModelInput,
    constants,
    describe,
    dim_text,
    fill,
    fixed_batch,
    fmt,
    fmt_dims,
    int_rule,
    is_state,
    value_range,
)


def from_data(
    model: model_io.Model, inputs: list[ModelInput], data: Path, samples: int
) -> InputSet:
    """Feeds from a user's .npz (or folder of them), checked against the model's inputs.
    Arrays that are not inputs (texts, boxes, file names) are ignored with one note."""
    arrays, files = _read_npz(data)
    names = {inp.name for inp in inputs}
    extra = sorted(set(arrays) - names - {"labels"})
    for name in extra:
        del arrays[name]
    if not arrays:
        first = inputs[0] if inputs else None
        wanted = (
            f"input '{first.name}' (expected {first.dtype} {fmt_dims(first.dims)})"
            if first
            else "any input"
        )
        raise DataError(f"data '{data}' has no array for {wanted}")
    counts = {k: int(v.shape[0]) if v.ndim else -1 for k, v in arrays.items()}
    if any(c < 1 for c in counts.values()) or len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {c if c >= 0 else 'scalar'}" for k, c in counts.items())
        raise DataError(
            f"data '{data}': every array needs the same number of samples on its first axis "
            f"({listing})"
        )
    total = next(iter(counts.values()))
    used = min(total, samples)
    consts = constants(model)
    outputs = [o.name for o in model.proto.graph.output]
    per_input: dict[str, list[np.ndarray]] = {}
    described: dict[str, Any] = {}
    for inp in inputs:
        if inp.name in arrays:
            per_input[inp.name], described[inp.name] = _split(inp, arrays[inp.name], data, used)
        else:
            per_input[inp.name], described[inp.name] = _auto_fill(
                inp, model, consts, outputs, data, used
            )
    feeds = [{name: per_input[name][i] for name in per_input} for i in range(used)]
    labels = _labels(arrays.get("labels"), data, used)
    description = {
        "source": "data",
        "synthetic": False,
        "path": str(data),
        "files": [str(f) for f in files],
        "samples": used,
        "samples_available": total,
        "labels": labels is not None,
        "inputs": described,
        "ignored_arrays": extra,
        "notes": [_ignored_note(data, extra)] if extra else [],
    }
    return InputSet(feeds=feeds, labels=labels, synthetic=False, description=description)


def _ignored_note(data: Path, extra: list[str]) -> str:
    quoted = ", ".join(f"'{name}'" for name in extra)
    return f"data '{data.name}': ignored array(s) {quoted}, which are not model inputs"


def _read_npz(data: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    """Arrays of one .npz, or of every .npz in a folder joined on the first axis."""
    if not data.exists():
        raise DataError(f"data file '{data}' does not exist")
    if data.is_dir():
        files = sorted(data.glob("*.npz"))
        if not files:
            raise DataError(f"data folder '{data}' holds no .npz files")
    else:
        files = [data]
    parts = [_load_npz(f) for f in files]
    keys = set(parts[0])
    for f, part in zip(files, parts, strict=True):
        if set(part) != keys:
            raise DataError(
                f"data file '{f}' has arrays {sorted(part)}, but '{files[0].name}' has "
                f"{sorted(keys)}; every file in the folder needs the same names"
            )
    if len(parts) == 1:
        return parts[0], files
    try:
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}, files
    except ValueError as exc:
        raise DataError(f"data files in '{data}' do not stack: {exc}") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of one .npz; never unpickles (object arrays are refused)."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"data file '{path}' is not a readable .npz (expected a zip of arrays from np.savez)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"data file '{path}' holds Python objects; only plain numeric arrays are read"
            ) from None
        raise DataError(f"data file '{path}' is not a readable .npz: {exc}") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"data file '{path}' is not a readable .npz: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zipfile raises several types on corrupt files
        raise DataError(f"data file '{path}' is not a readable .npz: {exc}") from None


def _split(
    inp: ModelInput, array: np.ndarray, data: Path, used: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One array per run from `array` (first axis = samples), checking dtype and shape."""
    expected = fmt_dims(inp.dims)
    if array.dtype != inp.dtype:
        same_kind = array.dtype.kind == inp.dtype.kind or (
            array.dtype.kind in "iu" and inp.dtype.kind in "iu"
        )
        if not same_kind:
            raise DataError(
                f"data '{data}': input '{inp.name}' is {array.dtype}, the model expects "
                f"{inp.dtype} {expected}"
            )
    rank = len(inp.dims)
    per_run: list[np.ndarray] = []
    if array.ndim == rank + 1:
        per_run = [array[i] for i in range(used)]
    elif array.ndim == rank and rank > 0 and not fixed_batch(inp.dims[0]):
        per_run = [array[i : i + 1] for i in range(used)]
    sample_shape = per_run[0].shape if per_run else array.shape[1:]
    fits = bool(per_run) and all(
        not isinstance(d, int) or d == s for d, s in zip(inp.dims, sample_shape, strict=True)
    )
    if not fits:
        raise DataError(
            f"data '{data}': input '{inp.name}' has shape {fmt(array.shape)}; the model "
            f"expects {expected} per run, so the array should be "
            f"[samples, {', '.join(dim_text(d) for d in inp.dims)}]"
            + (f" or [samples, {', '.join(dim_text(d) for d in inp.dims[1:])}]" if rank else "")
        )
    per_run = [np.ascontiguousarray(a, dtype=inp.dtype) for a in per_run]
    info = {
        "dtype": str(inp.dtype),
        "model_shape": expected,
        "shape": list(per_run[0].shape),
        "fill": "from data" + (f" (cast from {array.dtype})" if array.dtype != inp.dtype else ""),
        **value_range(per_run),
    }
    return per_run, info


def _auto_fill(
    inp: ModelInput,
    model: model_io.Model,
    consts: dict[str, onnx.TensorProto],
    outputs: list[str],
    data: Path,
    used: int,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """An input missing from the data that needs no data: recurrent state or a model constant."""
    rule: Any = None
    if is_state(inp, outputs):
        rule = ("zeros", "recurrent state, not in data")
    elif inp.dtype.kind in "iu":
        found = int_rule(model, inp, consts)
        if found[0] == "constant":
            rule = ("constant", found[1], f"{found[2]}, not in data")
    shape = [d if isinstance(d, int) else 1 for d in inp.dims]
    batch_like = all(
        isinstance(d, int) or i == 0 or (d or "").lower() in BATCH_NAMES
        for i, d in enumerate(inp.dims)
    )
    if rule is None or not batch_like:
        raise DataError(
            f"data '{data}' has no array for input '{inp.name}' "
            f"(expected {inp.dtype} {fmt_dims(inp.dims)})"
        )
    rng = np.random.default_rng(0)
    values = [fill(rule, shape, inp.dtype, rng) for _ in range(used)]
    return values, describe(inp, shape, rule, [{inp.name: v} for v in values])


def _labels(labels: np.ndarray | None, data: Path, used: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(labels.shape[0], -1)
    if labels.shape[1] != 1 or labels.dtype.kind not in "iub":
        raise DataError(
            f"data '{data}': 'labels' must be one integer class per sample (or one-hot rows); "
            f"got {labels.dtype} {fmt(labels.shape)}"
        )
    return labels[:used, 0].astype(np.int64)
