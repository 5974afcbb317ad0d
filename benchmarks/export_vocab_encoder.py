"""Export a small encoder with a MiniLM-size token table (30522 x 384), to measure what holding
Gather tables at 8 bits under recovery costs (README, Recovery). Needs torch; not in the suite.

    python benchmarks/export_vocab_encoder.py [--steps N] [--out DIR]

The encoder is `export_transformer.py`'s (same task and training loop) with 2 blocks, hidden
384, 6 heads and the table initialised like BERT's (N(0, 0.05)); the table is 47 of its 61 MB.
Written to DIR (default ~/.cache/mcompress-bench/): `vocab_encoder.onnx`, `_calib.npz` (128
sequences), `_val.npz` (256 others). Then, for example:

    mcompress quantize vocab_encoder.onnx --bits 4 [--calibration vocab_encoder_calib.npz]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from export_transformer import Encoder, sample, train

VOCAB, HIDDEN, LAYERS, HEADS = 30522, 384, 2, 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mcompress-bench")
    parser.add_argument("--steps", type=int, default=50, help="training batches")
    opts = parser.parse_args()
    torch.manual_seed(0)
    model = Encoder(VOCAB, HIDDEN, LAYERS, heads=HEADS)
    with torch.no_grad():
        model.tokens.weight.normal_(0, 0.05)
    accuracy = train(model, VOCAB, opts.steps, seed=0)
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / "vocab_encoder.onnx"
    rng = np.random.default_rng(1)
    example = sample(rng, 2, VOCAB)
    inputs = ("input_ids", "attention_mask")
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(example[k]) for k in inputs),
            str(path),
            input_names=list(inputs),
            output_names=["logits", "embedding"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in inputs},
            opset_version=17,
            dynamo=False,
        )
    calib = sample(rng, 128, VOCAB)
    np.savez(opts.out / "vocab_encoder_calib.npz", **{k: calib[k] for k in inputs})
    np.savez(opts.out / "vocab_encoder_val.npz", **sample(rng, 256, VOCAB))
    print(f"held-out accuracy {accuracy:.3f}; {path.stat().st_size / 1e6:.1f} MB: {path}")


if __name__ == "__main__":
    main()
