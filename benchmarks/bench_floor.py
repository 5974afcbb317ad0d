"""The fidelity floor against false alarms: int8 and fp16 of several model families must pass
it on random inputs, as every user without data will judge them.

    pip install torch   # once, outside the test suite: it exports the models
    python benchmarks/bench_floor.py [--out DIR] [MODEL.onnx ...]

Exports small PyTorch models with random weights (a CNN classifier with BatchNorm, a
depthwise MobileNet-like CNN with logits, a detector-like CNN with a sigmoid map, a transformer
encoder with a pooled embedding, a GRU with its state fed back), adds the shared models when
present and any model given, runs `mcompress quantize` and `mcompress fp16` on each and prints
the floor's figure per output and the verdict. Exits 1 on any false alarm.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mcompress.report import FLOOR_GATES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"


def export_models(out: Path) -> list[Path]:
    """Export the PyTorch model families (random weights, eval mode) to `out`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # its fused op has no ONNX export

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Sequential(
                nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
            )  # fmt: skip
            self.up = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(32, 1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.up(self.down(x)))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 64)
            layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.encoder(self.embed(ids)).mean(dim=1)

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(40, 64, batch_first=True)
            self.head = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y, hn = self.gru(x, h)
            return torch.sigmoid(self.head(y[:, -1])), hn

    def block(cin: int, cout: int, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, 1, 1, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]

    cnn = nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1),
    )  # fmt: skip
    mobile = nn.Sequential(
        *block(3, 32), *block(32, 32, groups=32), nn.Conv2d(32, 64, 1), nn.ReLU6(),
        *block(64, 64, groups=64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 100),
    )  # fmt: skip
    image = torch.randn(1, 3, 64, 64)
    specs = [
        ("cnn_classifier", cnn, (image,), ["x"], ["probs"]),
        ("mobile_logits", mobile, (image,), ["x"], ["logits"]),
        ("detector_map", Detector(), (image,), ["x"], ["maps"]),
        ("transformer_encoder", Encoder(), (torch.randint(0, 1000, (1, 16)),), ["ids"], ["emb"]),
        (
            "gru_state",
            Recurrent(),
            (torch.randn(1, 8, 40), torch.zeros(1, 1, 64)),
            ["x", "h"],
            ["speech", "hn"],
        ),
    ]
    paths = []
    for name, module, args, inputs, outputs in specs:
        module.eval()
        path = out / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module, args, str(path), input_names=inputs, output_names=outputs,
                opset_version=17, dynamo=False,
            )  # fmt: skip
        paths.append(path)
    return paths


def judge(model: Path, command: str, out: Path) -> tuple[int, list[dict], str]:
    """Run one mcompress command; its exit code, floor gates and verdict."""
    target = out / f"{model.stem}.{command}.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "mcompress", command, str(model), "-o", str(target), "--force",
         "--json"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return done.returncode, [], done.stderr.strip().splitlines()[-1:][0]
    floor = [g for g in report["gates"] if g["name"] in FLOOR_GATES]
    return done.returncode, floor, "PASSED" if report["passed"] else "BROKEN"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_floor_"))
    out.mkdir(parents=True, exist_ok=True)
    models = export_models(out) + list(args.models)
    models += [p for p in sorted(SHARED.glob("*.onnx"))]
    false_alarms = 0
    for model in models:
        for command in ("quantize", "fp16"):
            code, floor, verdict = judge(model, command, out)
            figures = ", ".join(
                f"{g['output']} {g['name'][4:]} {g['value']:.3g} (floor {g['threshold']:g})"
                for g in floor
            )
            print(f"{model.stem:28} {command:9} exit {code}  {verdict:7} {figures}")
            false_alarms += code != 0
    print(f"{false_alarms} false alarm(s) over {2 * len(models)} runs")
    return 1 if false_alarms else 0


if __name__ == "__main__":
    sys.exit(main())
