"""The graph layer shared by every pass: which nodes an `exclude` list names."""

from __future__ import annotations

import fnmatch

import onnx


def node_excluded(node: onnx.NodeProto, patterns: tuple[str, ...] | list[str]) -> bool:
    """True when a node's name or op type matches one of the `exclude` patterns (globs)."""
    return any(node.op_type == p or fnmatch.fnmatchcase(node.name, p) for p in patterns)
