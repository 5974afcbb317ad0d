"""The HTML report is one self-contained page that renders in headless Chromium with its charts
and without console errors (a CSP in the page turns any network request into one)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mcompress import render, render_charts
from mcompress.cli.validate import compare
from mcompress.config import ValidateConfig
from mcompress.encoding import Packing
from mcompress.encoding.facts import PackedTensor
from mcompress.report import PassRecord, RunReport
from tests import builders

HOSTILE = '<script>alert("x")</script>&"w'


def _chromium() -> str:
    """The Chromium binary, or skip: the suite installs nothing (.ci/run installs Chromium
    before the tests)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed (CI installs it with .ci/chromium.sh before the tests)")


def _headless(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Load `page` in headless Chromium: the DOM after rendering, and its console messages."""
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


class _Elements(HTMLParser):
    """Counts tags, and SVG charts with the bars/lines they hold."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.charts: dict[str, dict[str, int]] = {}
        self._chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "svg" and a.get("data-chart"):
            self._chart = str(a["data-chart"])
            self.charts[self._chart] = {}
        elif self._chart is not None and a.get("class") in ("bar", "line"):
            counts = self.charts[self._chart]
            counts[tag] = counts.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None


def _report(tmp_path: Path) -> RunReport:
    model = builders.save(builders.mlp(), tmp_path / "mlp.onnx")
    report = compare(model, model, ValidateConfig(samples=4, latency_runs=2, min_cosine=0.99))
    report.command = "run"
    tensors = [
        {"name": f"layer{i}.weight", "bytes_before": 4000 * (i + 1), "bytes_after": 1000 * (i + 1)}
        for i in range(20)
    ]
    tensors[15]["name"] = HOSTILE  # drawn in both tensor charts
    report.passes = [
        PassRecord(
            type="quantize",
            seconds=0.25,
            modified=True,
            stats={
                "mode": "dynamic",
                "tensors": [
                    {**t, "mse": 1e-4 * i, "sqnr_db": 40.0 - i} for i, t in enumerate(tensors)
                ],
            },
        ),
        PassRecord(type="strip", seconds=0.01, modified=False, stats={"bytes_removed": 0}),
    ]
    # Packing shrinks the first 12 further: their "after" is the packed size.
    packed = [PackedTensor(str(t["name"]), 1000, "bitmask", int(t["bytes_after"]), 500 * (i + 1),
                           0, None) for i, t in enumerate(tensors[:12])]  # fmt: skip
    report.packing = Packing(packed, scanned=20, bytes_before=1, bytes_after=1)
    report.notes.append(f"note with {HOSTILE}")
    return report


@pytest.mark.slow
def test_html_renders_in_chromium_with_charts(tmp_path: Path) -> None:
    report = _report(tmp_path)
    page = tmp_path / "report.html"
    page.write_text(render.to_html(report), encoding="utf-8")
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text and "<link" not in text
    dom, console = _headless(page, tmp_path)
    assert console == []
    found = _Elements()
    found.feed(dom)
    assert "script" not in found.tags  # the hostile tensor name was escaped
    assert found.charts["model-size"] == {"rect": 4}
    assert found.charts["tensor-bytes"] == {"rect": 2 * render_charts.MAX_BARS}
    assert found.charts["tensor-error"] == {"rect": render_charts.MAX_BARS}
    assert "layer19.weight before: 80.0 KB" in dom  # the largest tensor
    assert "layer11.weight before: 48.0 KB" in dom and "layer11.weight after: 6.0 KB" in dom
    assert "layer4.weight" not in dom  # only the largest MAX_BARS are drawn
    assert "<td>quantize</td><td>0.25s</td>" in dom
    assert "min_cosine" in dom and "PASSED" in dom


@pytest.mark.slow
def test_console_errors_are_detected(tmp_path: Path) -> None:
    """The check above would see a blocked request: this page makes one."""
    page = tmp_path / "bad.html"
    html = render.to_html(_report(tmp_path)).replace(
        "</main>", '<img src="http://example.invalid/x.png"></main>'
    )
    page.write_text(html, encoding="utf-8")
    _, console = _headless(page, tmp_path)
    assert any("Content Security Policy" in line for line in console)


def test_sensitivity_chart() -> None:
    rows = [
        {"layer": name, "level": level, "metric": drop}
        for name, slope in (("fc1", 0.1), ("fc2", 0.5), (HOSTILE, 0.0))
        for level, drop in ((0.0, 0.0), (0.5, slope / 2), (0.9, slope))
    ]
    svg = render_charts.sensitivity_svg(rows)
    found = _Elements()
    found.feed(svg)
    assert found.charts["sensitivity"] == {"polyline": 3}
    assert "script" not in found.tags and "&lt;script&gt;" in svg
    assert render_charts.sensitivity_svg([]) == ""


def test_markdown_names_failed_gate_and_random_inputs(tmp_path: Path) -> None:
    report = _report(tmp_path)
    report.gates[0].passed = False
    text = render.to_markdown(report)
    assert text.startswith("## mcompress run: FAILED")
    assert "| min_cosine | 0.99 | 1 | +0.01 | FAIL |" in text
    assert "4 RANDOM samples, seed 0: x 1x32 (N(0, 1))" in text
    assert "| quantize | 0.25s | yes | mode=dynamic |" in text
