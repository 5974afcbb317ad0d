"""The explicit pass registry: YAML `type:` name -> pass module."""

from __future__ import annotations

from mcompress.passes import cluster, distill, fp16, prune, quantize, strip
from mcompress.passes.base import Pass

# Each module is type-checked against the `Pass` protocol (Config, summary, check, apply).
PASSES: dict[str, Pass] = {
    "strip": strip,
    "quantize": quantize,
    "prune": prune,
    "cluster": cluster,
    "fp16": fp16,
    "distill": distill,
}
