"""The pass contract: a strict `Config`, `check` that fails early, `apply` that edits in place.

`check_pass` and `apply_pass` are the only way the pipeline runs a pass, so the contract is
checked in one place (as onnx-ir's `PassBase.__call__` does): requires (the config is the
pass's own) -> apply -> ensures (stats returned; no node reads, and no graph outputs, a value
that no graph defines, unless the model already did; every node's domain has an opset).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import onnx
from pydantic import BaseModel, ConfigDict, Field

from mcompress.graph import iter_graphs, subgraphs
from mcompress.model_io import Model


class PassConfig(BaseModel):
    """Base of every pass config: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# Options shared by the passes that edit weights one by one (prune, cluster, distill): which
# weights they leave alone, and the per-weight overrides `mcompress tune` writes.
Exclude = Annotated[
    tuple[str, ...],
    Field(description="node names (globs), op types or weight names to leave alone"),
]

V = TypeVar("V", int, float)


def overrides_field(what: str, overriding: str) -> Any:
    """The `layers` option: `what` per weight name, overriding `overriding` for that weight."""
    return Field(
        default_factory=dict,
        description=f"{what} per weight name, overriding {overriding} for that weight "
        "(`mcompress tune` writes these)",
    )


def checked_overrides(
    layers: dict[str, V], valid: Callable[[V], bool], what: str, rule: str
) -> dict[str, V]:
    """`layers` unchanged, or a ValueError naming the first weight whose value is not `valid`."""
    bad = next((name for name, value in layers.items() if not valid(value)), None)
    if bad is not None:
        raise ValueError(f"layers: {what} of '{bad}' must be {rule}")
    return layers


@dataclass
class PassContext:
    """What a pass may need beyond its config: data for calibration and a progress hook."""

    input_path: Path
    data: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    seed: int = 0
    progress: Callable[[str, int, int], None] = lambda label, done, total: None


@dataclass
class PassResult:
    """Whether the model changed, and the numbers the report shows for this pass."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Pass(Protocol):
    """Shape of a pass module (see `mcompress.passes.PASSES`, which mypy checks against it)."""

    @property
    def Config(self) -> type[PassConfig]: ...  # noqa: N802 - the module's Config class

    @property
    def summary(self) -> str: ...

    def check(self, model: Model, cfg: Any) -> None: ...

    def apply(self, model: Model, cfg: Any, ctx: PassContext) -> PassResult: ...


class ContractError(RuntimeError):
    """A pass broke the pass contract: a bug in mcompress, not a problem of the user's model."""


def check_pass(impl: Pass, model: Model, cfg: PassConfig) -> None:
    """Run a pass's own `check`, once its config is known to be the pass's."""
    _require_config(impl, cfg)
    impl.check(model, cfg)


def apply_pass(impl: Pass, model: Model, cfg: PassConfig, ctx: PassContext) -> PassResult:
    """requires -> apply -> ensures for one pass, editing `model` in place."""
    _require_config(impl, cfg)
    before = graph_defects(model.proto)
    result = impl.apply(model, cfg, ctx)
    if not isinstance(result, PassResult) or not result.stats:
        raise ContractError(f"pass {cfg_type(cfg)} returned no stats: {result!r}")
    new = graph_defects(model.proto) - before
    if new:
        raise ContractError(f"pass {cfg_type(cfg)} left a broken graph: {'; '.join(sorted(new))}")
    return result


def cfg_type(cfg: PassConfig) -> str:
    """The YAML `type:` of a pass config."""
    return str(getattr(cfg, "type", type(cfg).__name__))


def _require_config(impl: Pass, cfg: PassConfig) -> None:
    if not isinstance(cfg, impl.Config):
        raise ContractError(
            f"{type(cfg).__name__} given to a pass expecting {impl.Config.__name__}"
        )


def graph_defects(proto: onnx.ModelProto) -> set[str]:
    """What would make onnxruntime refuse the graph, found without serialising it: values read
    or output that no enclosing graph defines, and node domains without an opset import."""
    defects: set[str] = set()
    domains = {op.domain or "ai.onnx" for op in proto.opset_import}
    _undefined(proto.graph, set(), defects)
    for graph in iter_graphs(proto.graph):
        used = {node.domain or "ai.onnx" for node in graph.node}
        defects.update(f"domain '{d}' has no opset import" for d in used if d not in domains)
    return defects


def _undefined(graph: onnx.GraphProto, outer: set[str], defects: set[str]) -> None:
    defined = set(outer)
    defined.update(v.name for v in graph.input)
    defined.update(t.name for t in graph.initializer)
    defined.update(s.values.name for s in graph.sparse_initializer)
    defined.update(out for node in graph.node for out in node.output if out)
    for node in graph.node:
        missing = [name for name in node.input if name and name not in defined]
        defects.update(f"{node.op_type} '{node.name}' reads undefined '{n}'" for n in missing)
        for sub in subgraphs(node):
            _undefined(sub, defined, defects)
    for out in graph.output:
        if out.name not in defined:
            defects.add(f"graph '{graph.name}' outputs undefined '{out.name}'")


def unmatched_patterns(model: Model, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """The `exclude` patterns that match no node name, op type or weight name anywhere in the
    model: usually a typo, and then nothing is kept in float."""
    names: set[str] = set()
    for graph in model.graphs():
        names.update(t.name for t in graph.initializer)
        for node in graph.node:
            names.update((node.name, node.op_type))
            if node.op_type == "Constant":
                names.update(node.output)
    return [p for p in patterns if p not in names and not fnmatch.filter(names, p)]
