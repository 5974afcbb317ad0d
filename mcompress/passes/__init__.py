"""The explicit pass registry: YAML `type:` name -> pass module."""

from __future__ import annotations

from types import ModuleType

from mcompress.passes import cluster, distill, fp16, prune, quantize, strip

PASSES: dict[str, ModuleType] = {
    "strip": strip,
    "quantize": quantize,
    "prune": prune,
    "cluster": cluster,
    "fp16": fp16,
    "distill": distill,
}
