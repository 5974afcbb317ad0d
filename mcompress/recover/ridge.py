"""How much to trust a layer's calibration statistics: the ridge chosen on held-out batches.

Reconstruction fits each layer's weights to the original layer's outputs on the calibration
inputs. A layer that sees few input rows for its width (a frame-wise Conv over a short audio
window, a squeeze-excite conv seeing one vector per image) can fit those rows closely and the
inputs it has not seen badly: on the VAD proxy (128 clips, ~3 frames each) recovery with the
fixed ridge fitted its calibration clips 8x closer than magnitude pruning and held-out clips
6x worse. The ridge (a pull towards the original weights) is therefore chosen per layer by
fitting on one half of the batches and measuring the output error on the other, both ways.
"""

from __future__ import annotations

import numpy as np

from mcompress.recover import solve
from mcompress.recover.stats import GramStats, output_error

# Relative ridges tried (x mean diag of H); the smallest is the default used without a check.
CANDIDATES = (solve.RIDGE, 1e-1, 1.0, 10.0)
# Layers with at least this many calibration rows per input keep the default ridge: their fit
# generalises, and the check would cost extra solves on the widest layers.
ROWS_PER_INPUT = 16


def held_out_ridge(w: np.ndarray, a: GramStats, b: GramStats) -> float:
    """Half the candidate ridge whose least-squares target for `w` ([groups, rows, d]) fitted
    on `a` has the lowest output error on `b`, plus the same the other way round: a ridge is
    relative to H's diagonal, which grows with the rows, so the fit on all rows (twice those
    of a half) needs about half the relative pull."""
    if a.hcc is None or b.hcc is None or a.rows + b.rows >= ROWS_PER_INPUT * w.shape[2]:
        return solve.RIDGE
    errors = [
        output_error(solve.ls_target(w, a.hcc, a.cross(), ridge), w, b)
        + output_error(solve.ls_target(w, b.hcc, b.cross(), ridge), w, a)
        for ridge in CANDIDATES
    ]
    return CANDIDATES[int(np.argmin(errors))] / 2
