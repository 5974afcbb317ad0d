"""Pipeline configs: strict validation with file:line, key and "did you mean" hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcompress import config
from mcompress.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_valid_config_keeps_pass_order(tmp_path: Path) -> None:
    cfg = config.load(
        _write(tmp_path, "passes:\n  - {type: strip}\n  - type: strip\n    doc_strings: false\n")
    )
    assert [p.type for p in cfg.passes] == ["strip", "strip"]
    assert cfg.passes[1].doc_strings is False
    assert cfg.validation.samples == 32


def test_misspelt_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "passes:\n  - type: strip\n    doc_string: false\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.message == f"{path}:3: passes.0.doc_string: unknown key 'doc_string'"
    assert info.value.hint == "did you mean 'doc_strings'?"


def test_unknown_pass_type_and_validate_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, "passes:\n  - {type: strp}\n"))
    assert "unknown pass type 'strp'" in info.value.message
    assert info.value.hint == "did you mean 'strip'?"
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, "passes: []\nvalidate:\n  min_cosin: 0.9\n"))
    assert info.value.message.endswith(":3: validate.min_cosin: unknown key 'min_cosin'")
    assert info.value.hint == "did you mean 'min_cosine'?"


def test_wrong_type_and_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: validate.samples: Input should be"):
        config.load(_write(tmp_path, "validate:\n  samples: many\n"))
    with pytest.raises(ConfigError, match=r"validate.min_cosine: Input should be less"):
        config.load(_write(tmp_path, "validate: {min_cosine: 3}\n"))


def test_yaml_syntax_error_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: "):
        config.load(_write(tmp_path, "passes: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load(_write(tmp_path, "- 1\n- 2\n"))


def test_unsafe_yaml_tags_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config.load(_write(tmp_path, "passes: !!python/object/apply:os.system ['true']\n"))


def test_missing_config_suggests_preset() -> None:
    with pytest.raises(ConfigError, match="neither a file nor a bundled preset"):
        config.resolve_config_path("no-such-config")


def test_duplicate_key_names_file_key_and_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "passes:\n  - type: prune\n    sparsity: 0.3\n    sparsity: 0.9\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.message == f"{path}:4: passes.0.sparsity: duplicate key (first at line 3)"
    with pytest.raises(ConfigError) as info:
        config.load(
            _write(tmp_path, "validate: {samples: 4}\npasses: [{type: strip}]\nvalidate: {}\n")
        )
    assert info.value.message.endswith("cfg.yaml:3: validate: duplicate key (first at line 1)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cfg.yaml: the config is empty"),
        ("# nothing yet\n", "cfg.yaml: the config is empty"),
        ("prepare: true\npasses: []\n", "cfg.yaml:2: passes: no pass to run"),
        ("validate: {samples: 4}\n", "cfg.yaml: passes: no pass to run"),
    ],
)
def test_a_config_without_passes_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(_write(tmp_path, text))
    assert info.value.message == f"{tmp_path / message}"
    assert info.value.hint is not None and "passes: [{type: quantize}]" in info.value.hint


def test_every_preset_has_passes() -> None:
    for preset in config.PRESETS_DIR.glob("*.yaml"):
        assert config.load(preset).passes, preset
