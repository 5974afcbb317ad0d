"""Inputs for running a model: arrays from a user's `.npz` data, or seeded random ones.

Random inputs are made valid for the model where the graph says how (documented in the README):
- float inputs: standard normal; recurrent-state inputs (`state`, `h`, `c`, ... or an input whose
  name reappears as an output such as `stateN`, `state_out`, `present*`) are zeros;
- integer inputs: indices below the size of the table a `Gather` looks them up in; a scalar
  compared with a model constant (`Equal`/`Greater`/`Less`, e.g. a sample rate) takes that
  constant; otherwise integers 0..9;
- dynamic dimensions: see `shapes` (given, shared, batch-like, implied by the model, guessed;
  guesses are tried in onnxruntime and bounded by a memory estimate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mcompress import model_io
from mcompress.errors import DataError
from mcompress.inputs import shapes as shape_rules
from mcompress.inputs.data import from_data
from mcompress.inputs.facts import (
    BATCH_NAMES,
    InputSet,
    ModelInput,
    constants,
    describe,
    fill,
    graph_inputs,
    int_rule,
    is_state,
)
from mcompress.inputs.shapes import DEFAULT_DIM, DEFAULT_IMAGE_DIM, PROBE_LADDER

__all__ = [
    "BATCH_NAMES",
    "DEFAULT_DIM",
    "DEFAULT_IMAGE_DIM",
    "PROBE_LADDER",
    "InputSet",
    "make_feeds",
]


def make_feeds(
    source: Path | model_io.Model,
    *,
    data: Path | None,
    samples: int,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    session: Any = None,
    smallest: bool = False,
) -> InputSet:
    """Inputs for a model (a file, or one already loaded): read from `data` (.npz or folder of
    them), else seeded random. Guessed dimensions are tried in onnxruntime: in `session` when
    the caller has one for this model, else in a session on the model's file. `smallest`
    (probe runs such as the run-once check) keeps the smallest guessed size that runs."""
    model = source if isinstance(source, model_io.Model) else model_io.load_model(source)
    inputs = graph_inputs(model.proto)
    if data is not None:
        return from_data(model, inputs, Path(data), samples)
    runner = session or Path(model.path)
    return _random(model, runner, inputs, samples, seed, input_shapes, smallest)


def _rules(model: model_io.Model, inputs: list[ModelInput]) -> dict[str, Any]:
    """How each input's random values are made (see the module docstring)."""
    consts = constants(model)
    outputs = [o.name for o in model.proto.graph.output]
    rules: dict[str, Any] = {}
    for inp in inputs:
        if inp.dtype.kind in "iu":
            rules[inp.name] = int_rule(model, inp, consts)
        elif inp.dtype.kind == "f":
            state = is_state(inp, outputs)
            rules[inp.name] = ("zeros", "recurrent state") if state else ("normal", "N(0, 1)")
        elif inp.dtype.kind == "b":
            rules[inp.name] = ("bool", "random booleans")
        else:
            raise DataError(
                f"cannot make random values for input '{inp.name}' of dtype {inp.dtype}",
                "pass --data with an .npz of real inputs",
            )
    return rules


def _random(
    model: model_io.Model,
    runner: Any,
    inputs: list[ModelInput],
    samples: int,
    seed: int,
    input_shapes: dict[str, tuple[int, ...]],
    smallest: bool,
) -> InputSet:
    rules = _rules(model, inputs)
    shapes, guessed, dim_notes = shape_rules.resolve(model, inputs, input_shapes)
    if guessed:
        feed_at = shape_rules.FeedAt(inputs, shapes, guessed, rules)
        source = Path(model.path) if model.path and Path(model.path).is_file() else None
        size, note = shape_rules.choose(runner, source, feed_at, guessed, smallest)
        shapes = shape_rules.resized(shapes, guessed, size)
        dim_notes.append(note)
    rng = np.random.default_rng(seed)
    feeds = [
        {inp.name: fill(rules[inp.name], shapes[inp.name], inp.dtype, rng) for inp in inputs}
        for _ in range(samples)
    ]
    description: dict[str, Any] = {
        "source": "random",
        "synthetic": True,
        "seed": seed,
        "samples": samples,
        "inputs": {
            inp.name: describe(inp, shapes[inp.name], rules[inp.name], feeds) for inp in inputs
        },
        "dimensions": dim_notes,
        "guessed": {name: [shapes[name][i] for i in dims] for name, dims in guessed.items()},
    }
    return InputSet(feeds=feeds, labels=None, synthetic=True, description=description)
