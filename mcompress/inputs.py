"""Inputs for running a model: arrays from a user's `.npz` data, or seeded random ones.

Random inputs are made valid for the model where the graph says how (documented in the README):
- float inputs: standard normal; recurrent-state inputs (`state`, `h`, `c`, ... or an input whose
  name reappears as an output such as `stateN`, `state_out`, `present*`) are zeros;
- integer inputs: indices below the size of the table a `Gather` looks them up in; a scalar
  compared with a model constant (`Equal`/`Greater`/`Less`, e.g. a sample rate) takes that
  constant; otherwise integers 0..9;
- dynamic dimensions: `input_shapes` first, then a size known from another input sharing the
  dimension's name, then 1 for batch-like dimensions (the first one, or named `batch`/`N`),
  then 224 for image-like (rank >= 4) inputs and 64 for others. Guessed sizes are tried in
  onnxruntime and, when the model rejects them, retried from `SIZE_LADDER`.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mcompress import model_io, runtime
from mcompress.errors import DataError
from mcompress.runtime import error_line

DEFAULT_INT_RANGE = (0, 9)
DEFAULT_IMAGE_DIM = 224
DEFAULT_DIM = 64
SIZE_LADDER = (512, 256, 1024, 128, 2048, 32, 16, 8)
# Names of dynamic dimensions that mean "batch" (set to 1 in random inputs); the one list.
BATCH_NAMES = frozenset({"n", "b", "batch", "batch_size", "batchsize", "bs", "num_batches"})
_STATE_NAME = re.compile(
    r"(^|[_.\-/])(state|states|h|c|h0|c0|hn|cn|hidden|cell|memory|mem|cache|past\w*)"
    r"($|[_.\-/\d])",
    re.IGNORECASE,
)
_PASS_THROUGH = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand"}
_COMPARE = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}


@dataclass
class InputSet:
    """Feeds for onnxruntime (one dict per run), optional labels, and how they were made."""

    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray | None = None
    synthetic: bool = True
    description: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Input:
    name: str
    dtype: np.dtype
    dims: list[int | str | None]


def make_feeds(
    source: Path | model_io.Model,
    *,
    data: Path | None,
    samples: int,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    session: Any = None,
) -> InputSet:
    """Inputs for a model (a file, or one already loaded): read from `data` (.npz or folder of
    them), else seeded random. Guessed dimensions are tried in onnxruntime: in `session` when
    the caller has one for this model, else in a session on the model's file."""
    model = source if isinstance(source, model_io.Model) else model_io.load_model(source)
    inputs = _graph_inputs(model.proto)
    if data is not None:
        return _from_data(model, inputs, Path(data), samples)
    return _random(model, session or model.path, inputs, samples, seed, input_shapes)


# ---------------------------------------------------------------- model facts


def _graph_inputs(proto: onnx.ModelProto) -> list[_Input]:
    """Inputs that must be fed (old IR versions also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    found = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise DataError(f"input '{vi.name}' is not a tensor; mcompress cannot feed it")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims: list[int | str | None] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param if d.HasField("dim_param") else None)
        found.append(_Input(vi.name, dtype, dims))
    return found


def _constants(model: model_io.Model) -> dict[str, onnx.TensorProto]:
    """Every initializer and Constant-node tensor, by name, over all graphs."""
    consts: dict[str, onnx.TensorProto] = {}
    for graph in model.graphs():
        for tensor in graph.initializer:
            consts[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        consts[node.output[0]] = attr.t
    return consts


def _consumers(model: model_io.Model, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
    """Nodes (in any graph) that read `name`, with the input slot, following pass-through ops."""
    seen = {name}
    frontier = [name]
    while frontier:
        current = frontier.pop()
        for graph in model.graphs():
            for node in graph.node:
                for slot, value in enumerate(node.input):
                    if value != current:
                        continue
                    yield node, slot
                    if slot == 0 and (node.op_type in _PASS_THROUGH or node.op_type == "Gather"):
                        for out in node.output:
                            if out and out not in seen:
                                seen.add(out)
                                frontier.append(out)


def _int_rule(model: model_io.Model, inp: _Input, consts: dict[str, onnx.TensorProto]) -> Any:
    """('range', low, high, why) or ('constant', value, why) for an integer input."""
    scalar = all(isinstance(d, int) and d == 1 for d in inp.dims)
    compared: tuple[str, int, str] | None = None
    for node, slot in _consumers(model, inp.name):
        if node.op_type == "Gather" and slot == 1 and node.input[0] in consts:
            table = consts[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if len(table.dims) > axis:
                rows = int(table.dims[axis])
                why = f"indices into '{node.input[0]}' ({rows} rows, Gather '{node.name}')"
                return ("range", 0, rows - 1, why)
        if scalar and compared is None and node.op_type in _COMPARE:
            other = node.input[1 - slot] if len(node.input) == 2 and slot < 2 else ""
            tensor = consts.get(other)
            if tensor is not None and int(np.prod(tensor.dims, dtype=np.int64)) == 1:
                value = int(numpy_helper.to_array(tensor).reshape(-1)[0])
                compared = ("constant", value, f"compared with model constant ({node.op_type})")
    if compared is not None:
        return compared
    return ("range", *DEFAULT_INT_RANGE, "default range")


def _is_state(inp: _Input, output_names: list[str]) -> bool:
    """Recurrent state: a state-like name, or an input fed back from an output."""
    if inp.dtype.kind != "f":
        return False
    if _STATE_NAME.search(inp.name):
        return True
    base = inp.name.lower()
    fed_back = {f"{base}n", f"{base}_out", f"{base}_n", f"next_{base}", f"new_{base}"}
    if "past" in base:
        fed_back.add(base.replace("past", "present"))
    return any(o.lower() in fed_back for o in output_names)


# ---------------------------------------------------------------- random


def _random(
    model: model_io.Model,
    runner: Any,
    inputs: list[_Input],
    samples: int,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
) -> InputSet:
    consts = _constants(model)
    outputs = [o.name for o in model.proto.graph.output]
    shapes, guessed, dim_notes = _resolve_shapes(inputs, input_shapes)
    rules: dict[str, Any] = {}
    for inp in inputs:
        if inp.dtype.kind in "iu":
            rules[inp.name] = _int_rule(model, inp, consts)
        elif inp.dtype.kind == "f":
            state = _is_state(inp, outputs)
            rules[inp.name] = ("zeros", "recurrent state") if state else ("normal", "N(0, 1)")
        elif inp.dtype.kind == "b":
            rules[inp.name] = ("bool", "random booleans")
        else:
            raise DataError(
                f"cannot make random values for input '{inp.name}' of dtype {inp.dtype}",
                "pass --data with an .npz of real inputs",
            )
    if guessed:
        shapes, probe_note = _probe(runner, inputs, shapes, guessed, rules)
        dim_notes.append(probe_note)
    rng = np.random.default_rng(seed)
    feeds = [
        {inp.name: _fill(rules[inp.name], shapes[inp.name], inp.dtype, rng) for inp in inputs}
        for _ in range(samples)
    ]
    description: dict[str, Any] = {
        "source": "random",
        "synthetic": True,
        "seed": seed,
        "samples": samples,
        "inputs": {
            inp.name: _describe(inp, shapes[inp.name], rules[inp.name], feeds) for inp in inputs
        },
        "dimensions": dim_notes,
    }
    return InputSet(feeds=feeds, labels=None, synthetic=True, description=description)


def _resolve_shapes(
    inputs: list[_Input], input_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, list[int]], dict[str, list[int]], list[str]]:
    """Concrete shapes, the (input -> dim indices) that were guessed, and notes on each choice."""
    names = {inp.name for inp in inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise DataError(
            f"--input-shape names input '{unknown[0]}', which the model does not have",
            f"inputs: {', '.join(sorted(names))}",
        )
    known: dict[str, int] = {}
    for inp in inputs:
        if inp.name not in input_shapes:
            continue
        given = tuple(int(d) for d in input_shapes[inp.name])
        if len(given) != len(inp.dims) or any(
            isinstance(d, int) and d != g for d, g in zip(inp.dims, given, strict=True)
        ):
            raise DataError(
                f"--input-shape {inp.name}={'x'.join(map(str, given))} does not fit the model's "
                f"{inp.name} {_fmt_dims(inp.dims)}"
            )
        for d, g in zip(inp.dims, given, strict=True):
            if isinstance(d, str) and d:
                known[d] = g
    shapes: dict[str, list[int]] = {}
    guessed: dict[str, list[int]] = {}
    notes: list[str] = []
    for inp in inputs:
        if inp.name in input_shapes:
            shapes[inp.name] = [int(d) for d in input_shapes[inp.name]]
            notes.append(f"{inp.name}: {_fmt(shapes[inp.name])} from --input-shape")
            continue
        shape: list[int] = []
        for i, d in enumerate(inp.dims):
            if isinstance(d, int):
                shape.append(d)
            elif d and d in known:
                shape.append(known[d])
                notes.append(f"{inp.name}[{i}] '{d}' = {known[d]} (shared with another input)")
            elif i == 0 or (d or "").lower() in BATCH_NAMES:
                shape.append(1)
                notes.append(f"{inp.name}[{i}] '{d or '?'}' = 1 (batch-like)")
            else:
                shape.append(DEFAULT_IMAGE_DIM if len(inp.dims) >= 4 else DEFAULT_DIM)
                guessed.setdefault(inp.name, []).append(i)
        shapes[inp.name] = shape
    return shapes, guessed, notes


def _probe(
    runner: Any,
    inputs: list[_Input],
    shapes: dict[str, list[int]],
    guessed: dict[str, list[int]],
    rules: dict[str, Any],
) -> tuple[dict[str, list[int]], str]:
    """Run guessed shapes once in onnxruntime (`runner`: a session, or the model's file); if
    the model rejects them, try `SIZE_LADDER`."""
    where = ", ".join(f"{n}{guessed[n]}" for n in guessed)
    session = runner
    if isinstance(runner, Path):
        try:
            session = runtime.session(runner)
        except Exception as exc:  # noqa: BLE001 - the validation step reports load failures
            return shapes, f"dynamic dims {where}: defaults, not tried ({error_line(exc, 200)})"
    rng = np.random.default_rng(0)
    first_error = ""
    candidates: list[int | None] = [None, *SIZE_LADDER]
    for size in candidates:
        trial = {
            name: [
                size if (size is not None and i in guessed.get(name, [])) else d
                for i, d in enumerate(shape)
            ]
            for name, shape in shapes.items()
        }
        feed = {inp.name: _fill(rules[inp.name], trial[inp.name], inp.dtype, rng) for inp in inputs}
        try:
            session.run(None, feed)
        except Exception as exc:  # noqa: BLE001 - a rejected size just means: try the next one
            first_error = first_error or error_line(exc, 200)
            continue
        chosen = ", ".join(f"{n}={_fmt(trial[n])}" for n in guessed)
        if size is None:
            return trial, f"dynamic dims {where}: default sizes ({chosen}) ran in onnxruntime"
        return trial, (
            f"dynamic dims {where}: default sizes were rejected ({first_error}); "
            f"{size} runs ({chosen}); pin another with --input-shape"
        )
    return shapes, (
        f"dynamic dims {where}: no tried size ran in onnxruntime ({first_error}); "
        "pass --input-shape"
    )


def _fill(rule: Any, shape: list[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    kind = rule[0]
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "zeros":
        return np.zeros(shape, dtype)
    if kind == "constant":
        return np.full(shape, rule[1], dtype)
    if kind == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(rule[1], rule[2] + 1, shape).astype(dtype)


def _describe(
    inp: _Input, shape: list[int], rule: Any, feeds: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    kind = rule[0]
    if kind == "range":
        fill = f"integers {rule[1]}..{rule[2]} ({rule[3]})"
    elif kind == "constant":
        fill = f"constant {rule[1]} ({rule[2]})"
    else:
        fill = rule[1]
    values = [f[inp.name] for f in feeds]
    return {
        "dtype": str(inp.dtype),
        "model_shape": _fmt_dims(inp.dims),
        "shape": shape,
        "fill": fill,
        **_value_range(values),
    }


# ---------------------------------------------------------------- data files


def _from_data(model: model_io.Model, inputs: list[_Input], data: Path, samples: int) -> InputSet:
    arrays, files = _read_npz(data)
    names = {inp.name for inp in inputs}
    extra = sorted(set(arrays) - names - {"labels"})
    if extra:
        raise DataError(
            f"data '{data}' has array '{extra[0]}', which is not a model input",
            f"model inputs: {', '.join(sorted(names))} (plus optional 'labels')",
        )
    counts = {k: int(v.shape[0]) if v.ndim else -1 for k, v in arrays.items()}
    if any(c < 1 for c in counts.values()) or len(set(counts.values())) > 1:
        listing = ", ".join(f"{k}: {c if c >= 0 else 'scalar'}" for k, c in counts.items())
        raise DataError(
            f"data '{data}': every array needs the same number of samples on its first axis "
            f"({listing})"
        )
    total = next(iter(counts.values()))
    used = min(total, samples)
    consts = _constants(model)
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
    }
    return InputSet(feeds=feeds, labels=labels, synthetic=False, description=description)


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
    inp: _Input, array: np.ndarray, data: Path, used: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """One array per run from `array` (first axis = samples), checking dtype and shape."""
    expected = _fmt_dims(inp.dims)
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
    elif array.ndim == rank and rank > 0 and not _fixed_batch(inp.dims[0]):
        per_run = [array[i : i + 1] for i in range(used)]
    sample_shape = per_run[0].shape if per_run else array.shape[1:]
    fits = bool(per_run) and all(
        not isinstance(d, int) or d == s for d, s in zip(inp.dims, sample_shape, strict=True)
    )
    if not fits:
        raise DataError(
            f"data '{data}': input '{inp.name}' has shape {_fmt(array.shape)}; the model "
            f"expects {expected} per run, so the array should be "
            f"[samples, {', '.join(_dim_text(d) for d in inp.dims)}]"
            + (f" or [samples, {', '.join(_dim_text(d) for d in inp.dims[1:])}]" if rank else "")
        )
    per_run = [np.ascontiguousarray(a, dtype=inp.dtype) for a in per_run]
    info = {
        "dtype": str(inp.dtype),
        "model_shape": expected,
        "shape": list(per_run[0].shape),
        "fill": "from data" + (f" (cast from {array.dtype})" if array.dtype != inp.dtype else ""),
        **_value_range(per_run),
    }
    return per_run, info


def _auto_fill(
    inp: _Input,
    model: model_io.Model,
    consts: dict[str, onnx.TensorProto],
    outputs: list[str],
    data: Path,
    used: int,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """An input missing from the data that needs no data: recurrent state or a model constant."""
    rule: Any = None
    if _is_state(inp, outputs):
        rule = ("zeros", "recurrent state, not in data")
    elif inp.dtype.kind in "iu":
        found = _int_rule(model, inp, consts)
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
            f"(expected {inp.dtype} {_fmt_dims(inp.dims)})"
        )
    rng = np.random.default_rng(0)
    values = [_fill(rule, shape, inp.dtype, rng) for _ in range(used)]
    return values, _describe(inp, shape, rule, [{inp.name: v} for v in values])


def _labels(labels: np.ndarray | None, data: Path, used: int) -> np.ndarray | None:
    if labels is None:
        return None
    if labels.ndim == 2 and labels.shape[1] > 1:
        labels = labels.argmax(axis=1)
    labels = labels.reshape(labels.shape[0], -1)
    if labels.shape[1] != 1 or labels.dtype.kind not in "iub":
        raise DataError(
            f"data '{data}': 'labels' must be one integer class per sample (or one-hot rows); "
            f"got {labels.dtype} {_fmt(labels.shape)}"
        )
    return labels[:used, 0].astype(np.int64)


# ---------------------------------------------------------------- helpers


def _value_range(values: list[np.ndarray]) -> dict[str, Any]:
    nonempty = [v for v in values if v.size]
    if not nonempty or nonempty[0].dtype.kind not in "fiub":
        return {"min": None, "max": None}
    low = min(float(v.min()) for v in nonempty)
    high = max(float(v.max()) for v in nonempty)
    if nonempty[0].dtype.kind in "iub":
        return {"min": int(low), "max": int(high)}
    return {"min": round(low, 6), "max": round(high, 6)}


def _fixed_batch(d: int | str | None) -> bool:
    return isinstance(d, int) and d > 1


def _dim_text(d: int | str | None) -> str:
    return str(d) if isinstance(d, int) else (d or "?")


def _fmt_dims(dims: list[int | str | None]) -> str:
    return "[" + ", ".join(_dim_text(d) for d in dims) + "]"


def _fmt(shape: Any) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"
