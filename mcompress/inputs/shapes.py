"""Concrete sizes for dynamic input dimensions, in this order: `--input-shape`, a size shared
by name with another input, 1 for batch-like dims (the first, named `batch`/`N`, or any dynamic
dim of a recurrent-state input), sizes the model implies (its metadata, a `Resize` to fixed
`sizes` or a `Reshape` to a constant shape applied to the input), else a guess: 224 for
image-like (rank >= 4) inputs, 64 for others.

Guessed sizes are checked in onnxruntime: sizes from `PROBE_LADDER` are tried smallest first
until one runs (every failure tries the next); a probe (the run-once check) keeps the smallest
that runs. Otherwise the guess is kept only when a memory estimate (two profiled runs at small
sizes, extrapolated per node) says its largest activation stays under the runtime budget, and
only when two random feeds give different outputs there (else larger sizes that respond).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

from mcompress import model_io, runtime
from mcompress.errors import DataError
from mcompress.inputs.facts import (
    BATCH_NAMES,
    ModelInput,
    constants,
    consumers,
    fill,
    fmt,
    fmt_dims,
    is_state,
)

DEFAULT_IMAGE_DIM = 224
DEFAULT_DIM = 64
PROBE_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Probe inputs stay below this many elements each: a model that rejects every smaller size
# is not run on ever larger ones that could exhaust memory.
PROBE_MAX_ELEMENTS = 2**22
# Larger sizes tried when the chosen one gives outputs that ignore the inputs.
RESPONSIVE_STEPS = 3
_METADATA_KEYS = ("input_shape", "input_size", "image_size", "img_size", "shape")

Shapes = dict[str, list[int]]
Guessed = dict[str, list[int]]


def resolve(
    model: model_io.Model, inputs: list[ModelInput], input_shapes: dict[str, tuple[int, ...]]
) -> tuple[Shapes, Guessed, list[str]]:
    """Concrete shapes, the (input -> dim indices) that were guessed, and notes on each choice."""
    known = pinned_dims(inputs, input_shapes)
    outputs = [o.name for o in model.proto.graph.output]
    shapes: Shapes = {}
    guessed: Guessed = {}
    notes: list[str] = []
    for inp in inputs:
        if inp.name in input_shapes:
            shapes[inp.name] = [int(d) for d in input_shapes[inp.name]]
            notes.append(f"{inp.name}: {fmt(shapes[inp.name])} from --input-shape")
            continue
        implied, why = implied_dims(model, inp)
        state = is_state(inp, outputs)
        shape: list[int] = []
        for i, d in enumerate(inp.dims):
            if isinstance(d, int):
                shape.append(d)
            elif d and d in known:
                shape.append(known[d])
                notes.append(f"{inp.name}[{i}] '{d}' = {known[d]} (shared with another input)")
            elif i == 0 or (d or "").lower() in BATCH_NAMES or state:
                shape.append(1)
                notes.append(f"{inp.name}[{i}] '{d or '?'}' = 1 (batch-like)")
            elif i in implied:
                shape.append(implied[i])
                notes.append(f"{inp.name}[{i}] '{d or '?'}' = {implied[i]} ({why})")
            else:
                shape.append(DEFAULT_IMAGE_DIM if len(inp.dims) >= 4 else DEFAULT_DIM)
                guessed.setdefault(inp.name, []).append(i)
        shapes[inp.name] = shape
    return shapes, guessed, notes


def pinned_dims(
    inputs: list[ModelInput], input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, int]:
    """Sizes of named dims pinned by `input_shapes`, after checking each shape names an input
    of the model and fits it (DataError otherwise)."""
    names = {inp.name for inp in inputs}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        raise DataError(
            f"--input-shape / validate.input_shapes names input '{unknown[0]}', which the "
            "model does not have",
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
                f"--input-shape / validate.input_shapes {inp.name}={'x'.join(map(str, given))} "
                f"does not fit the model's {inp.name} {fmt_dims(inp.dims)}"
            )
        for d, g in zip(inp.dims, given, strict=True):
            if isinstance(d, str) and d:
                known[d] = g
    return known


# ---------------------------------------------------------------- sizes the model implies


def implied_dims(model: model_io.Model, inp: ModelInput) -> tuple[dict[int, int], str]:
    """Sizes for `inp`'s dynamic dims that the model states: metadata, else a Resize to
    constant `sizes` or a Reshape to a constant shape reading the input. ({dim: size}, why)."""
    dynamic = [i for i, d in enumerate(inp.dims) if not isinstance(d, int)]
    for prop in model.proto.metadata_props:
        key = prop.key.lower()
        if key in _METADATA_KEYS or key == f"{inp.name.lower()}_shape":
            sizes = _aligned(inp.dims, _ints(prop.value))
            if sizes:
                return sizes, f"model metadata '{prop.key}'"
    consts = constants(model)
    for node, slot in consumers(model, inp.name):
        if slot != 0 or node.op_type not in ("Resize", "Reshape"):
            continue
        wanted = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        if node.op_type == "Reshape":
            wanted = node.input[1]
        tensor = consts.get(wanted)
        if tensor is None:
            continue
        target = [int(v) for v in numpy_helper.to_array(tensor).reshape(-1)]
        if node.op_type == "Resize" and len(target) == len(inp.dims):
            return {i: target[i] for i in dynamic if target[i] > 0}, f"Resize '{node.name}'"
        sizes = _reshaped(inp.dims, target)
        if sizes:
            return sizes, f"Reshape '{node.name}'"
    return {}, ""


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", text)]


def _aligned(dims: list[int | str | None], values: list[int]) -> dict[int, int]:
    """Metadata sizes matched to the last dims (one value: every dynamic non-batch dim)."""
    dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) and i > 0]
    if len(values) == 1:
        return {i: values[0] for i in dynamic if values[0] > 0}
    if not values or len(values) > len(dims):
        return {}
    start = len(dims) - len(values)
    for i, v in enumerate(values):
        if isinstance(dims[start + i], int) and dims[start + i] != v:
            return {}
    return {start + i: v for i, v in enumerate(values) if start + i in dynamic and v > 0}


def _reshaped(dims: list[int | str | None], target: list[int]) -> dict[int, int]:
    """The one dynamic non-batch dim a Reshape to a fully constant shape fixes."""
    if not target or any(v <= 0 for v in target):
        return {}
    free = [i for i, d in enumerate(dims) if not isinstance(d, int) and i > 0]
    batch = 1 if dims and not isinstance(dims[0], int) else 0
    fixed = int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))
    total = int(np.prod(target, dtype=np.int64))
    if len(free) != 1 or not fixed or total % fixed:
        return {}
    size = total // fixed // max(batch, 1)
    return {free[0]: size} if size > 0 else {}


# ---------------------------------------------------------------- sizes that run


class FeedAt:
    """feed_at(size): one feed with every guessed dim at `size` (None: the default shapes).
    `shapes(size)` gives the same shapes without drawing values: the ladder is screened by
    size arithmetic, not by filling inputs of up to 2048x2048 (seconds on an image model)."""

    def __init__(
        self, inputs: list[ModelInput], shapes: Shapes, guessed: Guessed, rules: dict[str, Any]
    ) -> None:
        self.inputs, self.base, self.guessed, self.rules = inputs, shapes, guessed, rules
        self.rng = np.random.default_rng(0)

    def shapes(self, size: int | None) -> Shapes:
        return resized(self.base, self.guessed, size)

    def __call__(self, size: int | None) -> dict[str, np.ndarray]:
        trial = self.shapes(size)
        return {
            inp.name: fill(self.rules[inp.name], trial[inp.name], inp.dtype, self.rng)
            for inp in self.inputs
        }


def choose(
    runner: Any, source: Path | None, feed_at: FeedAt, guessed: Guessed, smallest: bool
) -> tuple[int | None, str]:
    """The size for every guessed dim (None: the defaults) and a note saying how it was found.

    `runner` is a session or a model file; `source` the file profiled for the memory estimate.
    """
    where = ", ".join(f"{n}{guessed[n]}" for n in guessed)
    session = runner
    if isinstance(runner, Path):
        try:
            session = runtime.session(runner, optimize=False)
        except Exception as exc:  # noqa: BLE001 - the validation step reports load failures
            return None, f"dynamic dims {where}: guessed, not tried ({runtime.error_line(exc)})"
    errors: list[str] = []
    ladder = [s for s in PROBE_LADDER if _elements(feed_at, s) <= PROBE_MAX_ELEMENTS]
    low = next((s for s in ladder if not _failed(session, feed_at(s), errors)), None)
    if low is None:
        return None, f"dynamic dims {where}: no tried size ran ({errors[0]}); pass --input-shape"
    if smallest:
        return low, f"dynamic dims {where}: {low}, the smallest size that runs"
    size, why = _within_budget(session, source, feed_at, guessed, low)
    if not _responsive(session, feed_at, size):
        size, why = _responsive_size(session, source, feed_at, guessed, low, size, why)
    chosen = "the default sizes" if size is None else str(size)
    return size, f"dynamic dims {where} guessed: {chosen} ({why}); pin them with --input-shape"


def _elements(feed_at: FeedAt, size: int) -> int:
    return max((int(np.prod(shape)) for shape in feed_at.shapes(size).values()), default=0)


def _failed(session: Any, feed: dict[str, np.ndarray], errors: list[str]) -> bool:
    error = runtime.run_error(session, feed)
    if error is not None:
        errors.append(error)
    return error is not None


def _within_budget(
    session: Any, source: Path | None, feed_at: FeedAt, guessed: Guessed, low: int
) -> tuple[int | None, str]:
    """The defaults when their estimated largest activation fits the budget and they run;
    else the largest ladder size that does; else `low`."""
    target = max(_guessed_sizes(feed_at, guessed, None), default=low)
    larger = [s for s in PROBE_LADDER if low < s <= target]
    try:
        estimates = runtime.estimate(source or session, feed_at, low, [target, *larger])
    except Exception as exc:  # noqa: BLE001 - no estimate: stay at a size known to run
        return low, f"{low} runs; no memory estimate ({runtime.error_line(exc)})"
    budget = runtime.ACTIVATION_BUDGET
    if estimates[target] <= budget and runtime.run_error(session, feed_at(None)) is None:
        return None, "they run"
    for size in sorted(larger, reverse=True):
        if estimates[size] <= budget and runtime.run_error(session, feed_at(size)) is None:
            return size, _why_not_default(estimates[target], budget)
    return low, _why_not_default(estimates[target], budget)


def _responsive(session: Any, feed_at: FeedAt, size: int | None) -> bool:
    """False when two different random feeds give identical outputs: at this size the inputs
    do not reach the outputs (an audio model whose window is longer than the chunk), so a
    validation there would prove nothing. Three feeds, not two: loud random audio saturates a
    VAD's gates now and then (1 pair in 30 on silero at 512 samples), identical by chance."""
    try:
        first, *others = (session.run(None, feed_at(size)) for _ in range(3))
    except Exception:  # noqa: BLE001 - the size ran before; a flaky failure is not our signal
        return True
    return any(
        not np.array_equal(a, b) for other in others for a, b in zip(first, other, strict=True)
    )


def _responsive_size(
    session: Any,
    source: Path | None,
    feed_at: FeedAt,
    guessed: Guessed,
    low: int,
    size: int | None,
    why: str,
) -> tuple[int | None, str]:
    """The next few ladder sizes above `size` that fit the budget, run and respond to their
    inputs; else `size` with a note that random inputs do not exercise the model there."""
    current = max(_guessed_sizes(feed_at, guessed, size))
    above = [s for s in PROBE_LADDER if s > current][:RESPONSIVE_STEPS]
    try:
        estimates = runtime.estimate(source or session, feed_at, low, above) if above else {}
    except Exception:  # noqa: BLE001 - no estimate: do not try larger sizes blindly
        estimates = {}
    for bigger in above:
        fits = bigger in estimates and estimates[bigger] <= runtime.ACTIVATION_BUDGET
        runs = fits and runtime.run_error(session, feed_at(bigger)) is None
        if runs and _responsive(session, feed_at, bigger):
            return bigger, f"at {current} the outputs do not depend on the inputs"
    return size, f"{why}; at this size the outputs do not depend on the random inputs"


def _why_not_default(estimate: int, budget: int) -> str:
    if estimate > budget:
        return f"the default sizes would need a {estimate / 2**20:,.0f} MB activation"
    return "the default sizes do not run"


def _guessed_sizes(feed_at: FeedAt, guessed: Guessed, size: int | None) -> list[int]:
    """The sizes of the guessed dims at `size`."""
    shapes = feed_at.shapes(size)
    return [int(shapes[name][axis]) for name, axes in guessed.items() for axis in axes]


def resized(shapes: Shapes, guessed: Guessed, size: int | None) -> Shapes:
    """`shapes` with every guessed dim at `size` (unchanged for None)."""
    return {
        name: [
            size if (size is not None and i in guessed.get(name, [])) else d
            for i, d in enumerate(shape)
        ]
        for name, shape in shapes.items()
    }
