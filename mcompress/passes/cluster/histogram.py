"""The large-tensor side of `kmeans1d`: values reduced to a fine weighted histogram (no sort),
and labels and clustered values produced chunk by chunk, so that besides the uint8 labels no
array of the tensor's size is made."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

HISTOGRAM_BINS = 1 << 20
# Values per bincount into those bins: the chunk's bin indices and float64 weights (16 MB each)
# are reused from chunk to chunk (fresh memory costs more in page faults than the counting:
# 0.4 s of system time per 64 MB tensor when every step allocated its own).
HISTOGRAM_CHUNK = 1 << 21
# Values per step of the element-wise passes over a large tensor: their temporaries fit in the
# cache and are reused.
CACHE_CHUNK = 1 << 16


class Histogram:
    """Values reduced to the means of the non-empty ones of `bins` equal-width bins: `points`
    (ascending) and the prefix sums of their counts (`mass`, from 0). A value's bin is
    computed again when it is labelled, rather than kept (an index array 2-8x the tensor)."""

    def __init__(self, values: np.ndarray, bins: int) -> None:
        self.values, self.bins = values, bins
        self.lo, hi = float(values.min()), float(values.max())
        self.scale = bins / (hi - self.lo) if hi > self.lo else 0.0
        count = np.zeros(bins, np.intp)
        total = np.zeros(bins)
        weights = np.empty(min(values.size, HISTOGRAM_CHUNK))
        for start, index in self._chunks():
            chunk = weights[: index.size]
            chunk[...] = values[start : start + index.size]
            count += np.bincount(index, minlength=bins)
            total += np.bincount(index, weights=chunk, minlength=bins)
        filled = count > 0
        # For each bin, the position of its mean among the means.
        self.position = np.cumsum(filled) - 1
        counted = count[filled].astype(np.float64)
        self.mass = np.concatenate(([0.0], np.cumsum(counted)))
        self.points = np.clip(total[filled] / counted, self.lo, hi)

    def labels(self, cuts: np.ndarray) -> np.ndarray:
        """Cluster of each value (uint8): that of its bin's mean, given the ascending `cuts`."""
        of_bin = np.searchsorted(cuts, self.points).astype(np.uint8)[self.position]
        labels = np.empty(self.values.size, np.uint8)
        for start, index in self._chunks():
            of_bin.take(index, out=labels[start : start + index.size], mode="clip")
        return labels

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(start, bin index of each value from start on) per HISTOGRAM_CHUNK values; the index
        array is reused, and computed in cache-sized steps through a float buffer."""
        values = self.values
        index = np.empty(min(values.size, HISTOGRAM_CHUNK), np.intp)
        buffer = np.empty(min(values.size, CACHE_CHUNK), values.dtype)
        offset, factor = values.dtype.type(self.lo), values.dtype.type(self.scale)
        for start in range(0, values.size, HISTOGRAM_CHUNK):
            end = min(start + HISTOGRAM_CHUNK, values.size)
            for step in range(start, end, CACHE_CHUNK):
                chunk = values[step : min(step + CACHE_CHUNK, end)]
                scaled, out = buffer[: chunk.size], index[step - start : step - start + chunk.size]
                np.subtract(chunk, offset, out=scaled)
                scaled *= factor
                out[...] = scaled
                np.minimum(out, self.bins - 1, out=out)
            yield start, index[: end - start]


def expand(table: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`table[labels]` (labels' shape, table's dtype) in cache-sized chunks: a whole `take`
    first copies every uint8 label into an 8-byte index (a temporary twice the float result)."""
    out = np.empty(labels.shape, table.dtype)
    flat_out, flat = out.reshape(-1), labels.reshape(-1)
    for start in range(0, flat.size, CACHE_CHUNK):
        end = start + CACHE_CHUNK
        table.take(flat[start:end], out=flat_out[start:end], mode="clip")
    return out
