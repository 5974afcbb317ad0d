"""Planning a batch: the models found under the given paths, unique output names, the
validation data of each model, the number of workers memory allows, and one Job each."""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mcompress import config, model_io
from mcompress.errors import UsageError
from mcompress.outputs import Outputs
from mcompress.shard import Shard

# Estimated peak memory of one worker: this many times the model's bytes on disk (the loaded
# proto, the compressed copy and two onnxruntime sessions during validation), plus a base cost.
MEMORY_PER_MODEL_BYTE = 3
WORKER_BASE_MEMORY = 150 * 2**20
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Job:
    """One model to compress: where it is read and written, and its pipeline config."""

    index: int
    input_path: Path
    name: str
    output: Path
    report: Path
    config: dict[str, Any]
    force: bool
    documents: tuple[str, ...] = ()  # extra report formats beside the JSON: "html", "md"
    config_file: Path | None = None

    @property
    def document_paths(self) -> list[Path]:
        """The extra report files (`--html`, `--markdown`) of this model."""
        return [self.report.with_suffix(f".{kind}") for kind in self.documents]


def discover(paths: list[str], skip_dir: Path | None = None) -> list[Path]:
    """Model files named by `paths`: files, folders (searched recursively for *.onnx), globs.

    Each path must yield at least one model; a file named twice is compressed once.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    skip = skip_dir.resolve() if skip_dir else None
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _search_folder(path, skip)
        elif _GLOB_CHARS & set(raw):
            matches = [Path(p) for p in sorted(glob.glob(raw, recursive=True)) if Path(p).is_file()]
        else:
            raise UsageError(f"'{raw}' is not a file, a folder or a glob pattern that matches")
        if not matches:
            raise UsageError(f"'{raw}' contains no .onnx model files")
        for match in matches:
            key = match.resolve()
            if key not in seen:
                seen.add(key)
                found.append(match)
    return found


def _search_folder(folder: Path, skip: Path | None) -> list[Path]:
    """*.onnx files under `folder`, sorted, leaving out hidden folders and the output folder."""
    matches = []
    for path in sorted(folder.rglob("*.onnx")):
        parts = path.relative_to(folder).parts[:-1]
        if any(p.startswith(".") for p in parts) or not path.is_file():
            continue
        if skip is not None and (skip == path.resolve().parent or skip in path.resolve().parents):
            continue
        matches.append(path)
    return matches


def unique_names(models: list[Path]) -> list[str]:
    """Output stems for `models`: the file stem, suffixed `-2`, `-3`... when stems collide."""
    names: list[str] = []
    taken: set[str] = set()
    for model in models:
        stem = model.name[:-5] if model.name.endswith(".onnx") else model.stem
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names


def load_data_map(path: Path) -> list[tuple[str, Path]]:
    """A YAML/JSON mapping of model file name (or glob) -> data .npz, relative to its file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read data map '{path}': {exc.strerror}") from None
    except yaml.YAMLError:
        raise UsageError(f"data map '{path}' is not valid YAML or JSON") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise UsageError(
            f"data map '{path}' must map model names or globs to data files, "
            'e.g. {"digits_*.onnx": "digits_val.npz"}'
        )
    entries = []
    for pattern, target in data.items():
        data_path = Path(target) if Path(target).is_absolute() else path.parent / target
        if not data_path.exists():
            raise UsageError(f"data map '{path}': data '{target}' for '{pattern}' does not exist")
        entries.append((pattern, data_path))
    return entries


def data_for(model: Path, data_map: list[tuple[str, Path]]) -> Path | None:
    """The data file of the first data-map entry whose pattern matches the model's name or path."""
    for pattern, data_path in data_map:
        if fnmatch.fnmatch(model.name, pattern) or fnmatch.fnmatch(model.as_posix(), pattern):
            return data_path
    return None


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_jobs(models: list[Path], requested: int | None) -> int:
    """`requested`, else the CPU count bounded by memory (see MEMORY_PER_MODEL_BYTE)."""
    if requested is not None:
        return max(1, min(requested, len(models)))
    jobs = os.cpu_count() or 1
    memory = available_memory()
    if memory is not None and models:
        jobs = min(jobs, max(1, memory // max(map(memory_estimate, models))))
    return max(1, min(jobs, len(models)))


def memory_estimate(model: Path) -> int:
    """Estimated peak memory of one worker compressing `model` (see MEMORY_PER_MODEL_BYTE)."""
    return MEMORY_PER_MODEL_BYTE * _model_bytes(model) + WORKER_BASE_MEMORY


def _model_bytes(model: Path) -> int:
    """Size on disk with external data; just the file when it cannot be parsed (the worker
    reports why)."""
    try:
        return model_io.disk_size(model)
    except Exception:  # noqa: BLE001 - a corrupt model is the worker's to report
        return model.stat().st_size


def plan(
    models: list[Path],
    cfg: config.PipelineConfig,
    out_dir: Path,
    what: str,
    *,
    force: bool = False,
    data_map: list[tuple[str, Path]] | None = None,
    documents: tuple[str, ...] = (),
    shard: Shard | None = None,
    config_file: Path | None = None,
    data_map_file: Path | None = None,
    summary_name: str = "summary.json",
) -> list[Job]:
    """One job per model (of `shard` only, named as in the whole batch); every output
    (models, reports, the summary) is checked against every input and against existing files
    (unless `force`) before anything runs."""
    base = cfg.model_dump(by_alias=True, exclude_unset=True)
    jobs = []
    for index, (model, name) in enumerate(zip(models, unique_names(models), strict=True)):
        job_cfg = dict(base)
        data = data_for(model, data_map or [])
        if data is not None:
            job_cfg["validate"] = {
                **cfg.validation.model_dump(exclude_unset=True),
                "data": str(data),
            }
        jobs.append(
            Job(
                index=index,
                input_path=model,
                name=name,
                output=out_dir / f"{name}.{what}.onnx",
                report=out_dir / f"{name}.report.json",
                config=job_cfg,
                force=force,
                documents=documents,
                config_file=config_file,
            )
        )
    if shard is not None:
        mine = set(shard.members(models))
        jobs = [job for job in jobs if job.index in mine]
    _check_outputs(jobs, force, [(config_file, "config file"), (data_map_file, "--data-map file")],
                   out_dir / summary_name)  # fmt: skip
    return jobs


def _check_outputs(
    jobs: list[Job], force: bool, inputs: list[tuple[Path | None, str]], summary: Path
) -> None:
    """Every job's outputs and the summary against every input and each other (Outputs)."""
    outs = Outputs(force)
    for job in jobs:
        outs.add_input(job.input_path, "input model")
        outs.add_input(job.config.get("validate", {}).get("data"), "--data file")
    for path, what in inputs:
        outs.add_input(path, what)
    for job in jobs:
        outs.add(job.output, "output")
        outs.add(model_io.data_path(job.output), "output's external data", exists_ok=True)
        outs.add(job.report, "report")
        for path in job.document_paths:
            outs.add(path, "report")
    outs.add(summary, summary.name)
    outs.check()
