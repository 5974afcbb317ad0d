"""Build, briefly train and export proxies of the held-out real models, for
`bench_proxies.py`. Needs torch (CPU wheel); not part of the test suite or the package.

    python benchmarks/export_proxies.py [--out DIR] [--seconds S] [--only NAME ...]

Each proxy copies the structure that broke mcompress before (issues 13-15), trained for
`--seconds` on a synthetic task so its weights and outputs are not random:

- `det` (DBNet-style text detector): conv-BN-ReLU backbone at strides 2..32, an FPN with
  nearest `Resize` upsampling, `Add` and `Concat`, a ConvTranspose head and a sigmoid
  probability map `[N, 1, H, W]`; input `x` `[N, 3, H, W]` with paddle2onnx-style dynamic
  names (`p2o.DynamicDimension.0..2`); opset 11, converted to IR 6. Task: find bright or dark
  bars ("text lines") on a noisy page. `det_val.npz`: `x` and the true `maps`.
- `rec` (CRNN text recognizer): conv stack that reduces the height 48 to 1, a 2-layer
  bidirectional LSTM, a linear classifier and softmax per timestep `[N, T, 11]` (CTC, blank 0);
  input `x` `[N, 3, 48, ?]`; opset 13, IR 7. Task: read 3-10 glyphs of 10 classes.
  `rec_val.npz`: `x` and `texts` (class ids 1..10, padded with 0).
- `rec_attn`: the same with one multi-head self-attention block after the LSTM and a height
  averaged instead of reduced by strides, so both H and W are dynamic (`height`, `width`), as
  in issue 15's recognizer; opset 14.
- `vad` (silero-vad as its package ships it): inputs `input` `[batch, 512]`, `state`
  `[2, batch, 128]`, `sr` int64 scalar; outputs `output` `[batch, 1]` and `stateN`. An `If` on
  `sr == 16000` holds a whole network per branch (its weights are the branch's initializers);
  in each branch the LSTM's W and R (512x128) are sliced out of one stacked tensor. Opset 16,
  IR 8. Task: speech-like harmonics vs noise. `vad_val.npz`: `input`, `speech` (0/1).

Every proxy also gets `NAME_calib.npz` (128 inputs, for `--calibration`) and `NAME_val.npz`
(held-out inputs and the task's truth, for `--data` and `bench_proxies.py`). Written to DIR
(default ~/.cache/mcompress-bench/).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F

GLYPHS, GLYPH_W = 10, 8
VAD_CHUNK, VAD_HIDDEN = 512, 128


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Detector(nn.Module):
    """DBNet-shaped: backbone C2..C5, FPN (lateral 1x1, upsample + add), concat, head."""

    def __init__(self) -> None:
        super().__init__()
        widths = [8, 16, 24, 32, 48]
        self.stem = nn.Sequential(conv_bn(3, widths[0], 2), conv_bn(widths[0], widths[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(conv_bn(a, b, 2), conv_bn(b, b))
            for a, b in zip(widths, widths[1:], strict=False)
        )
        self.lateral = nn.ModuleList(nn.Conv2d(w, 16, 1, bias=False) for w in widths[1:])
        self.smooth = nn.ModuleList(nn.Conv2d(16, 4, 3, padding=1, bias=False) for _ in range(4))
        self.head = nn.Sequential(
            conv_bn(16, 8),
            nn.ConvTranspose2d(8, 8, 2, 2),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=False)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], scale_factor=2.0)
        maps = [
            F.interpolate(smooth(p), scale_factor=float(2**i)) if i else smooth(p)
            for i, (smooth, p) in enumerate(zip(self.smooth, laterals, strict=False))
        ]
        return self.head(torch.cat(maps[::-1], dim=1))


def det_batch(rng: np.random.Generator, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy textured pages with 1-4 bright or dark bars; the truth is the bars' mask."""
    x = rng.normal(0, 0.35, (n, 3, h, w)).astype(np.float32)
    x += rng.normal(0, 0.3, (n, 3, 1, 1)).astype(np.float32)
    maps = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 5)):
            bh, bw = rng.integers(4, max(5, h // 5)), rng.integers(w // 6, w // 2)
            top, left = rng.integers(0, h - bh), rng.integers(0, w - bw)
            sign = rng.choice([-1.0, 1.0])
            stripes = 0.6 + 0.4 * np.sin(np.arange(bw) * rng.uniform(0.8, 2.0))
            x[i, :, top : top + bh, left : left + bw] += sign * 1.2 * stripes[None, None, :]
            maps[i, 0, top : top + bh, left : left + bw] = 1.0
    return x, maps


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (MatMul, Softmax), as exporters emit it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (dim // self.heads) ** -0.5
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, dim))


class Recognizer(nn.Module):
    """CRNN: conv stack to one row, 2-layer BiLSTM, optional self-attention, linear."""

    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.attention = attention
        stride_h = (1, 1) if attention else (2, 1)
        self.convs = nn.Sequential(
            conv_bn(3, 16),
            nn.MaxPool2d(2),  # 24 x W/2
            conv_bn(16, 32),
            nn.MaxPool2d(2),  # 12 x W/4
            conv_bn(32, 48),
            nn.MaxPool2d(stride_h, stride_h),  # 6 x W/4
            conv_bn(48, 64),
            nn.MaxPool2d(stride_h, stride_h),  # 3 x W/4
        )
        self.squeeze = nn.Conv2d(64, 64, (1 if attention else 3, 1))
        self.lstm = nn.LSTM(64, 64, num_layers=2, bidirectional=True, batch_first=True)
        if attention:
            self.attn = SelfAttention(128, 4)
            self.norm = nn.LayerNorm(128)
        self.fc = nn.Linear(128, GLYPHS + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.squeeze(self.convs(x))
        y = y.mean(2) if self.attention else y.squeeze(2)
        y, _ = self.lstm(y.transpose(1, 2))
        if self.attention:
            y = self.norm(y + self.attn(y))
        return self.fc(y).softmax(-1)


def rec_batch(
    rng: np.random.Generator, n: int, glyphs: np.ndarray, width: int = 10 * GLYPH_W
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lines of 3-10 glyphs (fixed 48x8 patterns per class, jittered, noisy); texts padded
    with 0 (the CTC blank), and per-timestep targets (each glyph's class at its centre step,
    blank elsewhere: a frame-wise loss that trains far faster than CTC on 2 cores)."""
    x = rng.normal(0, 0.3, (n, 3, 48, width)).astype(np.float32)
    texts = np.zeros((n, width // GLYPH_W), np.int64)
    frames = np.zeros((n, width // 4), np.int64)
    for i in range(n):
        count = rng.integers(3, width // GLYPH_W + 1)
        texts[i, :count] = rng.integers(1, GLYPHS + 1, count)
        left = rng.integers(0, width - count * GLYPH_W + 1)
        contrast = rng.uniform(0.7, 1.3)
        for k, c in enumerate(texts[i, :count]):
            frames[i, (left + k * GLYPH_W + GLYPH_W // 2) // 4] = c
            dy = rng.integers(-3, 4)
            x[i, :, :, left + k * GLYPH_W : left + (k + 1) * GLYPH_W] += contrast * np.roll(
                glyphs[c - 1], dy, axis=0
            )
    return x, texts, frames


def ctc_decode(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC: best class per step, repeats merged, blanks (0) dropped."""
    best = probs.argmax(-1)
    lines = []
    for row in best:
        keep = np.r_[True, row[1:] != row[:-1]] & (row != 0)
        lines.append(tuple(int(c) for c in row[keep]))
    return lines


def texts_of(texts: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(int(c) for c in row if c) for row in texts]


class VadBranch(nn.Module):
    """One sample-rate branch of a silero-like VAD: a fixed STFT as Conv1d, a conv encoder, an
    LSTM step over the recurrent state and a sigmoid decoder."""

    def __init__(self) -> None:
        super().__init__()
        basis = np.fft.rfft(np.eye(256) * np.hanning(256)[None], axis=1)[:, :64]
        kernel = np.concatenate([basis.real, basis.imag], axis=1).T[:, None, :]
        self.stft = nn.Conv1d(1, 128, 256, stride=128, bias=False)
        self.stft.weight.data = torch.tensor(kernel, dtype=torch.float32)
        self.stft.weight.requires_grad_(False)
        self.encoder = nn.Sequential(
            nn.Conv1d(64, 128, 3, padding=1), nn.ReLU(),
            nn.Conv1d(128, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.lstm = nn.LSTM(128, VAD_HIDDEN)
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(VAD_HIDDEN, 1), nn.Sigmoid())

    def forward(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spec = self.stft(audio[:, None])
        mag = torch.sqrt(spec[:, :64] ** 2 + spec[:, 64:] ** 2 + 1e-6)
        feat = self.encoder(torch.log(mag + 1e-3)).mean(-1)
        out, (h, c) = self.lstm(feat[None], (state[0:1], state[1:2]))
        return self.decoder(out[0]), torch.cat([h, c], dim=0)


def vad_batch(rng: np.random.Generator, n: int, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Half the chunks speech-like (a few harmonics of 90-300 Hz, an envelope, noise), half
    noise, hum or a single whistle; labels 1 for speech."""
    t = np.arange(VAD_CHUNK) / sr
    x = rng.normal(0, 1, (n, VAD_CHUNK)) * rng.uniform(0.005, 0.05, (n, 1))
    speech = rng.integers(0, 2, n)
    for i in range(n):
        if speech[i]:
            f0 = rng.uniform(90, 300)
            amps = rng.uniform(0.2, 1.0, 5) / np.arange(1, 6)
            wave = sum(a * np.sin(2 * np.pi * f0 * (k + 1) * t + rng.uniform(0, 6)) for k, a in
                       enumerate(amps))  # fmt: skip
            x[i] += rng.uniform(0.005, 0.3) * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
        elif rng.random() < 0.4:
            x[i] += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(800, 4000) * t)
    return x.astype(np.float32), speech


def train(model: nn.Module, step: Callable[[], torch.Tensor], seconds: float, name: str) -> None:
    """Adam on fresh synthetic batches until `seconds` pass."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    started, n = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - started < seconds:
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 1
        if n % 25 == 0:
            print(f"{name} step {n}: loss {float(loss):.4f}", flush=True)
    model.eval()


def export(model: nn.Module, args: tuple, path: Path, opset: int, **kw: object) -> None:
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), opset_version=opset, dynamo=False, **kw)


def make_det(out: Path, seconds: float, rng: np.random.Generator) -> None:
    model = Detector()

    def step() -> torch.Tensor:
        x, maps = det_batch(rng, 8, 64, 64)
        return F.binary_cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(maps))

    train(model, step, seconds, "det")
    dims = {0: "p2o.DynamicDimension.0", 2: "p2o.DynamicDimension.1", 3: "p2o.DynamicDimension.2"}
    path = out / "det.onnx"
    x, _ = det_batch(rng, 1, 64, 64)
    axes = {"x": dims, "sigmoid_0.tmp_0": dims}
    export(model, (torch.from_numpy(x),), path, 11, input_names=["x"],
           output_names=["sigmoid_0.tmp_0"], dynamic_axes=axes)  # fmt: skip
    proto = onnx.load(str(path))
    proto.ir_version = 6
    onnx.save(proto, str(path))
    x, _ = det_batch(rng, 64, 96, 128)
    np.savez(out / "det_calib.npz", x=x)
    x, maps = det_batch(rng, 48, 96, 128)
    np.savez(out / "det_val.npz", x=x, maps=maps)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).numpy() > 0.5
    iou = (pred & (maps > 0.5)).sum() / (pred | (maps > 0.5)).sum()
    print(f"det: validation IoU {iou:.3f}")


def make_rec(out: Path, seconds: float, rng: np.random.Generator, attention: bool) -> None:
    name = "rec_attn" if attention else "rec"
    glyphs = (rng.random((GLYPHS, 48, GLYPH_W)) > 0.6).astype(np.float32) * 1.5
    model = Recognizer(attention)

    def step() -> torch.Tensor:
        x, _, frames = rec_batch(rng, 16, glyphs)
        log_probs = model(torch.from_numpy(x)).clamp_min(1e-8).log()
        return F.nll_loss(log_probs.flatten(0, 1), torch.from_numpy(frames).flatten())

    train(model, step, seconds, name)
    dims = {0: "batch", 2: "height", 3: "width"} if attention else {0: "N", 3: "?"}
    path = out / f"{name}.onnx"
    x, _, _ = rec_batch(rng, 1, glyphs)
    axes = {"x": dims, "softmax_out": {0: "N", 1: "T"}}
    export(model, (torch.from_numpy(x),), path, 14 if attention else 13, input_names=["x"],
           output_names=["softmax_out"], dynamic_axes=axes)  # fmt: skip
    x, _, _ = rec_batch(rng, 128, glyphs)
    np.savez(out / f"{name}_calib.npz", x=x)
    x, texts, _ = rec_batch(rng, 128, glyphs)
    np.savez(out / f"{name}_val.npz", x=x, texts=texts)
    with torch.no_grad():
        lines = ctc_decode(model(torch.from_numpy(x)).numpy())
    correct = np.mean([a == b for a, b in zip(lines, texts_of(texts), strict=False)])
    print(f"{name}: validation lines correct {correct:.3f}")


def _vad_branch_graph(model: VadBranch, scratch: Path, prefix: str, opset: int) -> onnx.GraphProto:
    """The branch exported by torch, names prefixed, LSTM W and R sliced from one tensor."""
    audio, state = torch.zeros(2, VAD_CHUNK), torch.zeros(2, 2, VAD_HIDDEN)
    export(model, (audio, state), scratch, opset, input_names=["input", "state"],
           output_names=["output", "stateN"],
           dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}})  # fmt: skip
    graph = onnx.load(str(scratch)).graph
    outer = {"input", "state"}

    def rename(name: str) -> str:
        return name if not name or name in outer else f"{prefix}/{name}"

    for node in graph.node:
        node.name = rename(node.name or node.output[0])
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    for init in graph.initializer:
        init.name = rename(init.name)
    lstm = next(n for n in graph.node if n.op_type == "LSTM")
    inits = {i.name: i for i in graph.initializer}
    w, r = (numpy_helper.to_array(inits[lstm.input[k]]) for k in (1, 2))
    stacked = numpy_helper.from_array(np.concatenate([w[0], r[0]]), f"{prefix}/lstm_stack")
    for k in (1, 2):
        graph.initializer.remove(inits[lstm.input[k]])
    rows = w.shape[1]
    consts = {
        f"{prefix}/{label}": np.array(v, np.int64)
        for label, v in {"s0": [0], "s1": [rows], "s2": [2 * rows], "ax": [0]}.items()
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    slices = []
    for k, (lo, hi) in zip((1, 2), (("s0", "s1"), ("s1", "s2")), strict=False):
        sliced = f"{prefix}/lstm_slice{k}"
        slices += [
            helper.make_node("Slice", [f"{prefix}/lstm_stack", f"{prefix}/{lo}",
                             f"{prefix}/{hi}", f"{prefix}/ax"], [sliced], name=sliced),
            helper.make_node("Unsqueeze", [sliced, f"{prefix}/ax"], [lstm.input[k]],
                             name=f"{sliced}_unsqueeze"),
        ]  # fmt: skip
    graph.initializer.append(stacked)
    nodes = slices + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    outputs = [rename(o.name) for o in graph.output]
    del graph.input[:], graph.output[:], graph.value_info[:]
    graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs)
    graph.name = prefix
    return graph


def make_vad(out: Path, seconds: float, rng: np.random.Generator) -> None:
    branches = {}
    for sr, share in ((16000, 0.8), (8000, 0.2)):
        model = VadBranch()

        def step(model: VadBranch = model, sr: int = sr) -> torch.Tensor:
            state = torch.zeros(2, 32, VAD_HIDDEN)
            loss = torch.zeros(())
            for _ in range(3):  # a few chunks in a row so the state matters
                x, speech = vad_batch(rng, 32, sr)
                prob, state = model(torch.from_numpy(x), state)
                loss = loss + F.binary_cross_entropy(prob[:, 0], torch.from_numpy(speech).float())
            return loss / 3

        train(model, step, seconds * share, f"vad{sr}")
        branches[sr] = model
    opset = 16
    graphs = [_vad_branch_graph(branches[sr], out / "vad_branch.tmp.onnx", f"sr{sr}", opset)
              for sr in (16000, 8000)]  # fmt: skip
    (out / "vad_branch.tmp.onnx").unlink()
    nodes = [
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["output", "stateN"], name="If_0",
                         then_branch=graphs[0], else_branch=graphs[1]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", VAD_CHUNK]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", VAD_HIDDEN]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", VAD_HIDDEN]),
        ],
        [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out / "vad.onnx"))
    x, _ = vad_batch(rng, 128)
    np.savez(out / "vad_calib.npz", input=x)
    x, speech = vad_batch(rng, 256)
    np.savez(out / "vad_val.npz", input=x, speech=speech)
    with torch.no_grad():
        prob, _ = branches[16000](torch.from_numpy(x), torch.zeros(2, len(x), VAD_HIDDEN))
    print(f"vad: validation accuracy {np.mean((prob[:, 0].numpy() > 0.5) == speech):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "mcompress-bench")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time per proxy")
    parser.add_argument("--seed", type=int, default=0)
    names = ["det", "rec", "rec_attn", "vad"]
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    opts = parser.parse_args()
    torch.manual_seed(opts.seed)
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine were 10-70x slower
    opts.out.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[Path, float, np.random.Generator], None]] = {
        "det": make_det,
        "rec": lambda o, s, r: make_rec(o, s, r, attention=False),
        "rec_attn": lambda o, s, r: make_rec(o, s, r, attention=True),
        "vad": make_vad,
    }
    for name in opts.only:
        builders[name](opts.out, opts.seconds, np.random.default_rng(opts.seed))
        for suffix in (".onnx", "_calib.npz", "_val.npz"):
            print(opts.out / f"{name}{suffix}")


if __name__ == "__main__":
    main()
