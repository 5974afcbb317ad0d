"""Build, briefly train and export a BERT-style encoder to ONNX, for benchmarks that need a real
transformer (recovery, latency). Needs torch (CPU wheel); not part of the test suite.

    python benchmarks/export_transformer.py [--large] [--out DIR] [--seconds S]

The encoder (token + position embeddings, post-LayerNorm blocks of multi-head self-attention
and a GELU feed-forward, mean pooling over unpadded tokens) is trained for `--seconds` on a
synthetic task so its weights are not random: each token id belongs to one of 8 classes
(id mod 8) and the label of a sequence is its most frequent class, which needs every token.
Default: 4 layers, hidden 256, 256 token ids (~13 MB); `--large`: 7 layers, hidden 512, 1000
ids (~90 MB).

Written to DIR (default ~/.cache/mcompress-bench/), names printed at the end:
- `transformer[_large].onnx`: inputs `input_ids`, `attention_mask` int64 [batch, seq];
  outputs `logits` [batch, 8] and `embedding` [batch, hidden] (the pooled sentence vector).
- `transformer[_large]_calib.npz`: 128 sequences for `--calibration`.
- `transformer[_large]_val.npz`: 256 held-out sequences with `labels`, for `--data`.
Same seed, same files (up to torch's thread scheduling during training).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSES = 8
SEQ = 32


class Block(nn.Module):
    """Post-LayerNorm encoder block, written out so the export shows BERT's ops."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ff_in = nn.Linear(hidden, 4 * hidden)
        self.ff_out = nn.Linear(4 * hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + bias
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = self.norm1(x + self.attn_out(ctx))
        return self.norm2(x + self.ff_out(nn.functional.gelu(self.ff_in(x))))


class Encoder(nn.Module):
    """Embeddings, blocks, masked mean pooling, classifier head."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(SEQ, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads) for _ in range(layers))
        self.head = nn.Linear(hidden, CLASSES)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions)[None])
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -10000.0
        for block in self.blocks:
            x = block(x, bias)
        embedding = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.head(embedding), embedding


def sample(rng: np.random.Generator, n: int, vocab: int) -> dict[str, np.ndarray]:
    """Random sequences (lengths 8..SEQ, padded with id 0) and their majority-class labels."""
    ids = rng.integers(1, vocab, size=(n, SEQ))
    lengths = rng.integers(8, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    labels = np.array(
        [np.bincount(row[: n_] % CLASSES, minlength=CLASSES).argmax() for row, n_ in
         zip(ids, lengths, strict=True)]
    )  # fmt: skip
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "labels": labels}


def train(model: Encoder, vocab: int, seconds: float, seed: int) -> float:
    """Adam on fresh batches until `seconds` pass; returns the last batch's accuracy."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started, step, accuracy = time.perf_counter(), 0, 0.0
    model.train()
    while time.perf_counter() - started < seconds:
        batch = sample(rng, 32, vocab)
        logits, _ = model(torch.from_numpy(batch["input_ids"]),
                          torch.from_numpy(batch["attention_mask"]))  # fmt: skip
        labels = torch.from_numpy(batch["labels"])
        loss = nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        accuracy = float((logits.argmax(-1) == labels).float().mean())
        if step % 25 == 0:
            print(f"step {step}: loss {float(loss):.3f}, batch accuracy {accuracy:.2f}", flush=True)
    model.eval()
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="7 layers, hidden 512 (~90 MB)")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mcompress-bench")
    parser.add_argument("--seconds", type=float, default=180.0, help="training time budget")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.manual_seed(opts.seed)
    vocab, hidden, layers = (1000, 512, 7) if opts.large else (256, 256, 4)
    model = Encoder(vocab, hidden, layers, heads=8)
    accuracy = train(model, vocab, opts.seconds, opts.seed)
    name = "transformer_large" if opts.large else "transformer"
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / f"{name}.onnx"
    rng = np.random.default_rng(opts.seed + 1)
    example = sample(rng, 2, vocab)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "embedding"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")},
            opset_version=17,
            dynamo=False,
        )
    calib = sample(rng, 128, vocab)
    inputs = ("input_ids", "attention_mask")
    np.savez(opts.out / f"{name}_calib.npz", **{k: calib[k] for k in inputs})
    val = sample(rng, 256, vocab)
    np.savez(opts.out / f"{name}_val.npz", **val)
    print(f"trained to batch accuracy {accuracy:.2f}; {path.stat().st_size / 1e6:.1f} MB")
    for suffix in (".onnx", "_calib.npz", "_val.npz"):
        print(opts.out / f"{name}{suffix}")


if __name__ == "__main__":
    main()
