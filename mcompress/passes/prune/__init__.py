"""`prune`: zero the smallest-magnitude weights, or remove whole channels (`structured: true`).

Unstructured pruning writes dense arrays with zeros; `mcompress.encoding` stores them compactly
at save, so the file shrinks. Weights are found by the op and input slot that read them, in every
graph, so a main-graph initializer used by a Conv inside an `If` branch is pruned too.
"""

from __future__ import annotations

from typing import Any

from mcompress.errors import NothingToDo, PassError
from mcompress.model_io import Model
from mcompress.passes.base import PassContext, PassResult
from mcompress.passes.prune.config import Config
from mcompress.passes.prune.magnitude import layer_counts, prune_tensor, totals_of
from mcompress.recover.options import (
    NO_DATA_NOTE,
    check_calibration,
    wants_recovery,
)
from mcompress.weights import WEIGHT_SLOTS, find_candidates

summary = "Zero the smallest-magnitude weights, or remove whole channels (structured: true)."

_UNSTRUCTURED_ONLY = ("scope", "min_elements", "include_biases", "n_m", "layers")
_STRUCTURED_ONLY = ("round_to",)
_CRITERIA = {True: ("l1", "l2"), False: ("magnitude", "wanda", "sparsegpt")}


def _structured() -> Any:
    """The structured pruning module, imported by the runs that use it (its channel analysis
    is start-up time an unstructured prune does not need)."""
    from mcompress.passes.prune import structured

    return structured


def check(model: Model, cfg: Config) -> None:
    """Refuse option mixes that do not apply, and models with nothing prunable."""
    for key in _STRUCTURED_ONLY if not cfg.structured else _UNSTRUCTURED_ONLY:
        if key in cfg.model_fields_set:
            need = "structured: true" if key in _STRUCTURED_ONLY else "unstructured pruning"
            raise PassError(f"prune option '{key}' applies only to {need}")
    if cfg.criterion is not None and cfg.criterion not in _CRITERIA[cfg.structured]:
        kind = "structured" if cfg.structured else "unstructured"
        raise PassError(
            f"criterion '{cfg.criterion}' does not apply to {kind} pruning",
            f"use one of: {', '.join(_CRITERIA[cfg.structured])}",
        )
    needs_data = cfg.criterion in ("wanda", "sparsegpt") or cfg.n_m is not None
    if needs_data and not wants_recovery(cfg):
        what = f"criterion '{cfg.criterion}'" if cfg.criterion else "n_m"
        raise PassError(
            f"{what} needs calibration data and recover: true",
            "pass --calibration FILE.npz (or calibration: random)",
        )
    check_calibration(cfg)
    ops = {node.op_type for graph in model.graphs() for node in graph.node}
    wanted = set(_structured().LAYER_OPS if cfg.structured else WEIGHT_SLOTS)
    if not ops & wanted:
        raise NothingToDo(
            "nothing to prune: the model has no " + ", ".join(sorted(wanted)) + " layer"
        )


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    """Prune in place; stats list every tensor touched and every tensor skipped, with why."""
    if cfg.structured:
        return _structured().apply(model, cfg, ctx)
    if wants_recovery(cfg):
        from mcompress.passes.prune import recovered as prune_recovered

        return prune_recovered.apply(model, cfg, ctx)
    candidates, skipped = find_candidates(model, cfg.min_elements, cfg.include_biases, cfg.exclude)
    counts = layer_counts(candidates, cfg.sparsity, cfg.scope, cfg.layers)
    tensors = []
    for done, (cand, k) in enumerate(zip(candidates, counts, strict=True)):
        ctx.progress("prune", done, len(candidates))
        tensors.append(prune_tensor(cand, k))
    ctx.progress("prune", len(candidates), len(candidates))
    totals = totals_of(tensors)
    notes = [] if tensors else ["prune: no weight was large enough to prune (see skipped)"]
    if cfg.recover and tensors:
        notes.append(NO_DATA_NOTE.format(name="prune"))
    stats: dict[str, Any] = {
        "mode": "unstructured",
        "criterion": "magnitude",
        "scope": cfg.scope,
        "target_sparsity": cfg.sparsity,
        "totals": totals,
        "tensors": tensors,
        "skipped": skipped,
    }
    return PassResult(
        modified=totals["zeros_after"] > totals["zeros_before"], stats=stats, notes=notes
    )
