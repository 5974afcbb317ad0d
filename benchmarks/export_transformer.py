"""Build, briefly train and export a BERT-style encoder to ONNX, for benchmarks that need a real
transformer (recovery, latency). Needs torch (CPU wheel); not part of the test suite.

    python benchmarks/export_transformer.py [--large] [--out DIR] [--steps N]

The encoder (token + position embeddings, post-LayerNorm blocks of multi-head self-attention
and a GELU feed-forward, mean pooling over unpadded tokens) is trained for `--steps` batches
(AdamW, warm-up then cosine decay) on a synthetic task so its weights are not random: each
token id belongs to one of 8 classes (id mod 8), 40% of a sequence's tokens come from one
planted class, and the label is the sequence's most frequent class, which needs every token.
The held-out accuracy (8 classes, chance 0.125) is printed at the end; with the default 150
steps, 0.924 for the default model (under 4 minutes) and 0.838 for `--large` (301 s of CPU,
24 minutes of wall time on the loaded shared VM; 80 steps gave 0.754): the files the README
measures.
Default: 4 layers, hidden 256, 256 token ids (~13 MB); `--large`: 7 layers, hidden 512, 1000
ids (~90 MB).

Written to DIR (default ~/.cache/mcompress-bench/), names printed at the end:
- `transformer[_large].onnx`: inputs `input_ids`, `attention_mask` int64 [batch, seq];
  outputs `logits` [batch, 8] and `embedding` [batch, hidden] (the pooled sentence vector).
- `transformer[_large]_calib.npz`: 128 sequences for `--calibration`.
- `transformer[_large]_val.npz`: 256 held-out sequences with `labels`, for `--data`.
Same seed, same files: training runs on one torch thread, and two exports of the default
model were byte-identical.
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
# Share of tokens drawn from the planted class; peak learning rate; sequences per batch.
PLANTED = 0.4
LR = 5e-4
BATCH = 32


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
    """Sequences (lengths 8..SEQ, padded with id 0) with a planted class: each token is drawn
    from one class's ids with probability PLANTED, else uniformly, so the majority class is
    clear enough to learn in minutes; the label is the true majority (lowest class on ties)."""
    planted_class = rng.integers(0, CLASSES, size=n)
    per_class = (vocab - 1 - planted_class) // CLASSES + 1
    planted_ids = planted_class[:, None] + CLASSES * rng.integers(0, per_class[:, None], (n, SEQ))
    planted_ids[planted_ids == 0] = CLASSES  # id 0 is padding
    ids = np.where(rng.random((n, SEQ)) < PLANTED, planted_ids, rng.integers(1, vocab, (n, SEQ)))
    lengths = rng.integers(8, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    labels = np.array(
        [np.bincount(row[: n_] % CLASSES, minlength=CLASSES).argmax() for row, n_ in
         zip(ids, lengths, strict=True)]
    )  # fmt: skip
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask, "labels": labels}


def train(model: Encoder, vocab: int, steps: int, seed: int) -> float:
    """AdamW with linear warm-up and cosine decay over `steps` batches of BATCH fresh sequences;
    returns the accuracy on 512 held-out sequences."""
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))),
    )
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = sample(rng, BATCH, vocab)
        logits, _ = model(torch.from_numpy(batch["input_ids"]),
                          torch.from_numpy(batch["attention_mask"]))  # fmt: skip
        labels = torch.from_numpy(batch["labels"])
        loss = nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 25 == 0:
            accuracy = float((logits.argmax(-1) == labels).float().mean())
            print(f"step {step}: loss {loss.item():.3f}, batch accuracy {accuracy:.2f}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    model.eval()
    held_out = sample(np.random.default_rng(seed + 2), 512, vocab)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(held_out["input_ids"]),
                          torch.from_numpy(held_out["attention_mask"]))  # fmt: skip
    return float((logits.argmax(-1).numpy() == held_out["labels"]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="7 layers, hidden 512 (~90 MB)")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mcompress-bench")
    parser.add_argument("--steps", type=int, default=150, help="training batches")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.set_num_threads(1)  # the VM's 2 cores are shared; one thread also fixes the sums' order
    torch.manual_seed(opts.seed)
    vocab, hidden, layers = (1000, 512, 7) if opts.large else (256, 256, 4)
    model = Encoder(vocab, hidden, layers, heads=8)
    accuracy = train(model, vocab, opts.steps, opts.seed)
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
    print(f"held-out accuracy {accuracy:.3f}; {path.stat().st_size / 1e6:.1f} MB")
    for suffix in (".onnx", "_calib.npz", "_val.npz"):
        print(opts.out / f"{name}{suffix}")


if __name__ == "__main__":
    main()
