"""YAML (plus CLI overrides) -> a validated `PipelineConfig`; errors name file, line and key."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from mcompress.errors import ConfigError
from mcompress.passes import PASSES

if TYPE_CHECKING:  # imported where a YAML file is read: a one-pass command never needs it
    import yaml

PRESETS_DIR = Path(__file__).parent / "presets"
MAX_INPUT_ELEMENTS = 2**31  # an input shape's elements (--input-shape, input_shapes)


class ValidateConfig(BaseModel):
    """How the compressed model is checked against the original, and the gates it must pass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    data: str | None = Field(None, description="an .npz (or folder of them) keyed by input names")
    samples: int = Field(
        32,
        ge=1,
        le=100_000,
        description="random validation inputs; with data, all of its samples unless this is set",
    )
    seed: int = Field(0, description="seed for random validation inputs")
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    latency_runs: int = Field(20, ge=1, le=10_000)
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="gate: accuracy drop at most this (needs labelled data)"
    )
    min_cosine: float | None = Field(
        None, ge=-1, le=1, description="gate: cosine similarity of the outputs at least this"
    )
    min_sqnr: float | None = Field(
        None,
        description="fidelity floor: SQNR in dB of every output that is not class scores "
        "(default 1 on random inputs, 6 on --data)",
    )
    min_top1_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fidelity floor: top-1 agreement of class-score outputs "
        "(default 0.5 on random inputs, 0.9 on --data)",
    )
    gates: bool = Field(
        True, description="false: measure and report only; no gate, not even the floor, fails"
    )
    max_latency_ratio: float | None = Field(
        None, gt=0, description="gate: compressed latency / original latency at most this"
    )
    min_compression_ratio: float | None = Field(
        None, gt=0, description="gate: input size / output size at least this"
    )
    optional_gates: list[str] = Field(
        default_factory=list,
        description="gates skipped with a note (not failed) when their metric is unavailable",
    )

    @field_validator("input_shapes")
    @classmethod
    def _shapes(cls, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
        """The rules of --input-shape: every dim at least 1, fewer than 2^31 elements."""
        for name, dims in shapes.items():
            problem = shape_problem(f"{name}={'x'.join(map(str, dims))}", dims)
            if problem:
                raise ValueError(problem)
        return shapes

    @field_validator("optional_gates")
    @classmethod
    def _known_gates(cls, names: list[str]) -> list[str]:
        gates = [n for n in cls.model_fields if n.startswith(("max_", "min_"))]
        unknown = [n for n in names if n not in gates]
        if unknown:
            raise ValueError(f"unknown gate {unknown[0]!r}; gates: {', '.join(gates)}")
        return names


def shape_problem(text: str, dims: list[int]) -> str | None:
    """Why the input shape `text` (`name=1x3x224x224`, giving `dims`) is refused, or None."""
    if not dims or min(dims) < 1:
        return f"'{text}': every dimension must be at least 1"
    if math.prod(dims) >= MAX_INPUT_ELEMENTS:
        return (
            f"'{text}' has {math.prod(dims)} elements; at most {MAX_INPUT_ELEMENTS - 1} are allowed"
        )
    return None


def _pass_union() -> Any:
    configs = tuple(module.Config for module in PASSES.values())
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007


PassConfigs: Any = _pass_union()


class SearchGrid(BaseModel):
    """The prune sparsities and cluster counts a budget search tries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sparsity: list[float] = Field(
        default_factory=list,
        description="sparsities tried for the prune pass (the largest that keeps the gates wins; "
        "none: the pass is dropped)",
    )
    clusters: list[int] = Field(
        default_factory=list,
        description="cluster counts tried for the cluster pass (the smallest that keeps the "
        "gates wins; none: the pass is dropped)",
    )

    @field_validator("sparsity")
    @classmethod
    def _sparsities(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError("each sparsity must be > 0 and < 1")
        return sorted(set(values))

    @field_validator("clusters")
    @classmethod
    def _cluster_counts(cls, values: list[int]) -> list[int]:
        if any(not 2 <= v <= 256 for v in values):
            raise ValueError("each cluster count must be 2..256")
        return sorted(set(values))


class SearchConfig(SearchGrid):
    """A budget instead of a fixed recipe: the most compressing values that keep the gates."""

    time_budget: float | None = Field(
        None, gt=0, description="seconds; the search stops there and keeps the best so far"
    )
    objective: Literal["size", "latency"] = Field(
        "size", description="what the winner minimises among the candidates within the gates"
    )
    per_layer: bool = Field(
        False,
        description="then per layer, as `mcompress tune` does: more pruning and fewer shared "
        "values for the layers that take them best, 4-bit blocks for MatMul weights",
    )
    with_calibration: SearchGrid | None = Field(
        None,
        description="the lists searched instead when the passes recover on calibration data "
        "(each trial is then a recovery sweep: a coarser grid, which per_layer refines)",
    )


class PipelineConfig(BaseModel):
    """An ordered list of passes plus validation settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passes: list[PassConfigs] = Field(default_factory=list)
    prepare: bool = Field(True, description="fold BatchNorm, Constant nodes -> initializers")
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    search: SearchConfig | None = Field(
        None, description="search the prune/cluster settings within the gates (presets do)"
    )

    @property
    def validation(self) -> ValidateConfig:
        return self.validate_


def build(
    data: dict[str, Any], source: str = "<command line>", flags: dict[str, str] | None = None
) -> PipelineConfig:
    """Validate a plain dict as a pipeline config, turning errors into one-line ConfigErrors.

    `flags` maps a key path (`passes.0.sparsity`, `validate.samples`) to the command-line
    option that set it: an error in that value names the option (`--sparsity: must be < 1`).
    """
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in _key_path(error["loc"]))
        if flags and key in flags:
            raise ConfigError(f"{flags[key]}: {option_message(error)}") from None
        raise _config_error(exc, data, source, None) from None
    _last_only(cfg, source, None)
    return cfg


def option_message(error: Any) -> str:
    """A pydantic error as a short sentence about a command-line value."""
    ctx = error.get("ctx", {})
    bounds = {
        "less_than": ("<", "lt"),
        "less_than_equal": ("<=", "le"),
        "greater_than": (">", "gt"),
        "greater_than_equal": (">=", "ge"),
    }
    if error["type"] in bounds:
        sign, key = bounds[error["type"]]
        return f"must be {sign} {ctx[key]:g}"
    if error["type"] == "literal_error":
        return f"must be {ctx['expected']}, not {error['input']!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def build_pass(data: dict[str, Any]) -> Any:
    """Validate one pass config dict (used by the one-pass CLI commands)."""
    try:
        return TypeAdapter(PassConfigs).validate_python(data)
    except ValidationError as exc:
        raise _config_error(exc, data, "<command line>", None) from None


def resolve_config_path(name_or_path: str) -> Path:
    """A config file path, or the name of a bundled preset (`level1`, `fp16`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file() and not path.suffix:
        return preset
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"did you mean preset '{close[0]}'?" if close else f"presets: {', '.join(names)}"
    raise ConfigError(f"config '{name_or_path}' is neither a file nor a bundled preset", hint)


def load(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML pipeline config (safe loading only)."""
    import yaml

    path = resolve_config_path(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config '{path}': {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if not data:
        raise ConfigError(f"{path}: the config is empty", _NEEDS_PASSES)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a config must be a mapping with a 'passes' list")
    _refuse_duplicate_keys(root, [], str(path))
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, data, str(path), root) from None
    if not cfg.passes:
        where = f"{path}:{_line_of(root, ['passes'])}" if "passes" in data else str(path)
        raise ConfigError(f"{where}: passes: no pass to run", _NEEDS_PASSES)
    _last_only(cfg, str(path), root)
    return cfg


# Passes that must run last: distill fits the final model to the original, so a pass after
# it would compress what it fitted.
_LAST_ONLY = ("distill",)


def _last_only(cfg: PipelineConfig, source: str, root: yaml.Node | None) -> None:
    """Refuse a `distill` pass anywhere but last in `passes`."""
    for index, pass_cfg in enumerate(cfg.passes[:-1]):
        if pass_cfg.type in _LAST_ONLY:
            line = _line_of(root, ["passes", index])
            where = f"{source}:{line}" if line else source
            raise ConfigError(
                f"{where}: passes.{index}: {pass_cfg.type} must be the last pass "
                f"({len(cfg.passes) - index - 1} pass(es) follow it)",
                f"move {pass_cfg.type} to the end of 'passes'",
            )


# A config without passes would write an unchanged copy: refused, pointing at the fix.
_NEEDS_PASSES = (
    "a config needs a 'passes' list of at least one pass, e.g. passes: [{type: quantize}]"
)


def _refuse_duplicate_keys(node: yaml.Node | None, loc: list[Any], source: str) -> None:
    """YAML silently keeps the last of two equal keys (`sparsity: 0.3` then `sparsity: 0.9`
    prunes 90%): refuse it, naming the key and both lines."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1
            if name in first:
                where = ".".join(str(p) for p in [*loc, name])
                raise ConfigError(
                    f"{source}:{line}: {where}: duplicate key (first at line {first[name]})"
                )
            first[name] = line
            _refuse_duplicate_keys(value, [*loc, name], source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, [*loc, index], source)


def _config_error(
    exc: ValidationError, data: Any, source: str, root: yaml.Node | None
) -> ConfigError:
    err = exc.errors()[0]
    loc = _key_path(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{source}:{line}" if line else source
    message = str(err["msg"]).removeprefix("Value error, ")
    hint = None
    if err["type"] == "extra_forbidden":
        message = f"unknown key '{loc[-1]}'"
        allowed = _allowed_keys(data, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
    elif err["type"] == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("tag", err["input"]))
        message = f"unknown pass type '{tag}'"
        close = difflib.get_close_matches(tag, list(PASSES), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"pass types: {', '.join(PASSES)}"
    elif err["type"] == "union_tag_not_found":
        message = "each pass needs a 'type'"
        hint = f"pass types: {', '.join(PASSES)}"
    return ConfigError(f"{where}: {key}: {message}", hint)


_PASS_TAGS = set(PASSES)


def _key_path(loc: Any) -> list[Any]:
    """An error location as the keys a user wrote (without pydantic's pass-type tag)."""
    path = list(loc)
    if len(path) > 2 and path[0] == "passes" and path[2] in _PASS_TAGS:
        del path[2]
    return path


def _allowed_keys(data: Any, loc: list[Any]) -> list[str]:
    if not loc:
        return ["passes", "prepare", "validate", "search"]
    if loc[0] == "validate":
        return list(ValidateConfig.model_fields)
    if loc[0] == "search":
        return list(SearchConfig.model_fields)
    if loc[0] == "passes" and len(loc) >= 2:
        try:
            kind = data["passes"][loc[1]]["type"]
            return list(PASSES[kind].Config.model_fields)
        except (KeyError, IndexError, TypeError):
            return []
    return []


def _line_of(root: yaml.Node | None, loc: list[Any]) -> int | None:
    """1-based line of the YAML node at `loc` (the key itself for unknown keys)."""
    if root is None:
        return None
    import yaml

    node = root
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                return line
            line = match[0].start_mark.line + 1
            node = match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
