"""Time mcompress's 1-D k-means against scikit-learn's KMeans on the same tensors, in one run.

Tensor sets: the weights the cluster pass would cluster in each shared model (after the same
preparation: Constant nodes -> initializers, BatchNorm folded), when ../shared/models exists,
and one large random tensor (N(0, 0.02), 2**22 values by default). For every tensor and K,
`kmeans1d(values, K)` runs with the pass's defaults and scikit-learn runs
`KMeans(n_clusters=K, n_init=1, random_state=0)` on the same values. Exact zeros are their own
centroid in mcompress (clustering keeps pruned zeros), so for a tensor with zeros scikit-learn
gets the same problem: the non-zero values and K-1 clusters. Times are the best of `--repeat`
for both; scikit-learn uses all cores (OpenMP), mcompress one.

Printed per set and K: total time of each, speed ratio (scikit-learn / mcompress, target
>= 10x), inertia ratio (sum of mcompress inertias / sum of scikit-learn's, target <= 1.01) and
the worst single-tensor inertia ratio.

    python benchmarks/bench_cluster.py [--clusters 16 256] [--big 4194304] [--big-clusters 16]
        [--inits auto] [--repeat 1]

scikit-learn is a bench-only dependency (`pip install scikit-learn`).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from mcompress import model_io
from mcompress.passes import cluster
from mcompress.passes.cluster.kmeans1d import kmeans1d
from mcompress.prepare import prepare
from mcompress.weights import find_candidates

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"
MODELS = ("ppocr_mobile_v2_cls.onnx", "silero_vad_op18_ifless.onnx")
SPEED_TARGET = 10.0
INERTIA_TARGET = 1.01


@dataclass
class Row:
    """One tensor set clustered with one K by both implementations."""

    name: str
    k: int
    init: str
    tensors: int = 0
    ours_s: float = 0.0
    theirs_s: float = 0.0
    ours_inertia: float = 0.0
    theirs_inertia: float = 0.0
    worst: tuple[float, str] = (0.0, "")
    skipped: list[str] = field(default_factory=list)

    @property
    def speed(self) -> float:
        return self.theirs_s / max(self.ours_s, 1e-12)

    @property
    def inertia_ratio(self) -> float:
        return self.ours_inertia / max(self.theirs_inertia, 1e-300)

    @property
    def passed(self) -> bool:
        return self.speed >= SPEED_TARGET and self.inertia_ratio <= INERTIA_TARGET


def model_tensors(path: Path) -> dict[str, np.ndarray]:
    """The weights `mcompress cluster` would cluster (default options), as float32 arrays."""
    model = model_io.load_model(path)
    prepare(model)
    defaults = cluster.Config()
    candidates, _ = find_candidates(model, defaults.min_elements, False, ())
    return {
        c.weight.name: np.asarray(c.weight.array(), np.float32).reshape(-1)
        for c in candidates
        if c.weight.size >= 2 * defaults.clusters
    }


def best_time(repeat: int, run: Callable[[], float]) -> tuple[float, float]:
    """(fastest wall time, result) of `repeat` calls."""
    times, value = [], 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    return min(times), value


def sklearn_inertia(values: np.ndarray, k: int) -> float:
    """scikit-learn on the problem mcompress solves: zeros fixed, K-1 clusters for the rest."""
    if (values == 0).any():
        values, k = values[values != 0], k - 1
    model = KMeans(n_clusters=k, n_init=1, random_state=0).fit(values.reshape(-1, 1))
    return float(model.inertia_)


def our_inertia(values: np.ndarray, k: int, init: str) -> float:
    return kmeans1d(values, k, init=init).inertia  # type: ignore[arg-type]


def compare(
    name: str, tensors: dict[str, np.ndarray], k: int, inits: list[str], repeat: int
) -> list[Row]:
    """One row per init; scikit-learn runs once per tensor and serves as every row's reference."""
    rows = [Row(name, k, init) for init in inits]
    for tensor_name, values in tensors.items():
        if np.unique(values).size <= k:
            for row in rows:
                row.skipped.append(tensor_name)
            continue
        theirs_s, theirs = best_time(repeat, partial(sklearn_inertia, values, k))
        for row in rows:
            ours_s, ours = best_time(repeat, partial(our_inertia, values, k, row.init))
            row.tensors += 1
            row.ours_s += ours_s
            row.theirs_s += theirs_s
            row.ours_inertia += ours
            row.theirs_inertia += theirs
            ratio = ours / max(theirs, 1e-300)
            if ratio > row.worst[0]:
                row.worst = (ratio, f"{tensor_name} ({values.size})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, nargs="*", default=[16, 256])
    parser.add_argument("--big", type=int, default=1 << 22, help="random tensor size (0: none)")
    parser.add_argument("--big-clusters", type=int, nargs="+", default=[16])
    parser.add_argument("--inits", nargs="+", default=["auto"])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="sklearn")

    jobs: list[tuple[str, dict[str, np.ndarray], list[int]]] = []
    for model_name in MODELS:
        if (SHARED / model_name).is_file():
            jobs.append((model_name, model_tensors(SHARED / model_name), args.clusters))
        else:
            print(f"skipping {model_name}: not in {SHARED}")
    if args.big:
        big = np.random.default_rng(0).normal(0, 0.02, args.big).astype(np.float32)
        jobs.append((f"random N(0,0.02) x {args.big:,}", {"random": big}, args.big_clusters))

    rows = [
        row
        for name, tensors, ks in jobs
        for k in ks
        for row in compare(name, tensors, k, args.inits, args.repeat)
    ]
    header = (
        f"{'tensors':<34} {'K':>4} {'init':<8} {'n':>3} {'sklearn s':>10} {'ours s':>8} "
        f"{'speed':>8} {'inertia':>8} {'worst tensor':>13}  target"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<34} {row.k:>4} {row.init:<8} {row.tensors:>3} {row.theirs_s:>10.3f} "
            f"{row.ours_s:>8.3f} {row.speed:>7.1f}x {row.inertia_ratio:>8.4f} "
            f"{row.worst[0]:>13.4f}  {'met' if row.passed else 'NOT MET'}"
        )
    for row in rows:
        skipped = f", {len(row.skipped)} tensors with <= K values skipped" if row.skipped else ""
        print(f"{row.name} K={row.k} {row.init}: worst tensor {row.worst[1]}{skipped}")
    total_theirs = sum(r.theirs_s for r in rows)
    total_ours = sum(r.ours_s for r in rows)
    print(
        f"\nall rows: sklearn {total_theirs:.2f}s, mcompress {total_ours:.2f}s, "
        f"speed {total_theirs / max(total_ours, 1e-12):.1f}x; targets: speed >= "
        f"{SPEED_TARGET:g}x and inertia ratio <= {INERTIA_TARGET} per row: "
        f"{'all met' if all(r.passed for r in rows) else 'NOT all met'}"
    )


if __name__ == "__main__":
    main()
