"""`strip`: remove what runs nothing — doc strings, node metadata, stale value_info, dead weights.

Exporters attach stack traces and module paths to every node (hundreds of KB on real models);
model-level metadata (`metadata_props` of the model) is kept because it carries licences and
labels users rely on.
"""

from __future__ import annotations

from typing import Literal

from mcompress.model_io import Model
from mcompress.passes.base import PassConfig, PassContext, PassResult
from mcompress.prepare import remove_unused_initializers

summary = "Remove doc strings, node metadata, redundant value_info and unused initializers."


class Config(PassConfig):
    type: Literal["strip"] = "strip"
    doc_strings: bool = True
    node_metadata: bool = True
    value_info: bool = True
    unused_initializers: bool = True


def check(model: Model, cfg: Config) -> None:
    """Nothing can make stripping fail."""


def apply(model: Model, cfg: Config, ctx: PassContext) -> PassResult:
    before = model.proto.ByteSize()
    counts = {"doc_strings": 0, "node_metadata": 0, "value_info": 0, "unused_initializers": 0}
    if cfg.doc_strings and model.proto.doc_string:
        model.proto.doc_string = ""
        counts["doc_strings"] += 1
    for graph in model.graphs():
        if cfg.doc_strings:
            counts["doc_strings"] += _clear_doc(graph)
            for vi in (*graph.input, *graph.output):
                if vi.doc_string:
                    vi.doc_string = ""
                    counts["doc_strings"] += 1
            for node in graph.node:
                counts["doc_strings"] += _clear_doc(node)
        if cfg.node_metadata:
            for node in graph.node:
                if len(node.metadata_props):
                    counts["node_metadata"] += len(node.metadata_props)
                    del node.metadata_props[:]
            if len(graph.metadata_props):
                counts["node_metadata"] += len(graph.metadata_props)
                del graph.metadata_props[:]
        if cfg.value_info and len(graph.value_info):
            counts["value_info"] += len(graph.value_info)
            del graph.value_info[:]
    if cfg.unused_initializers:
        counts["unused_initializers"] = remove_unused_initializers(model)
    removed_bytes = before - model.proto.ByteSize()
    return PassResult(modified=removed_bytes > 0, stats={**counts, "bytes_removed": removed_bytes})


def _clear_doc(item: object) -> int:
    if getattr(item, "doc_string", ""):
        item.doc_string = ""  # type: ignore[attr-defined]
        return 1
    return 0
