"""Settings factory: overrides > environment > config-file section > defaults; errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from driftlabel import ConfigError, DriftlabelSettings, load_settings


class DemoSettings(DriftlabelSettings):
    """A concern-shaped settings class, as every folder defines its own."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLABEL_DEMO_", frozen=True, extra="forbid")
    section = "demo"

    url: str = "http://localhost"
    workers: int = 1
    token: SecretStr = SecretStr("")


def test_defaults_then_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "driftlabel.toml"
    cfg.write_text('[demo]\nurl = "http://from-file"\nworkers = 3\n[other]\nx = 1\n')
    assert load_settings(DemoSettings).url == "http://localhost"
    assert load_settings(DemoSettings, cfg).workers == 3
    monkeypatch.setenv("DRIFTLABEL_DEMO_WORKERS", "5")
    s = load_settings(DemoSettings, cfg)
    assert (s.url, s.workers) == ("http://from-file", 5)
    assert load_settings(DemoSettings, cfg, workers=7).workers == 7


def test_yaml_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "driftlabel.yaml"
    cfg.write_text("demo:\n  url: http://yaml\n")
    monkeypatch.setenv("DRIFTLABEL_CONFIG", str(cfg))
    assert load_settings(DemoSettings).url == "http://yaml"


def test_settings_are_frozen_and_secrets_hidden() -> None:
    s = load_settings(DemoSettings, token="s3cret")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert s.token.get_secret_value() == "s3cret"
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        s.workers = 2  # type: ignore[misc]


def test_errors_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLABEL_DEMO_WORKERS", "many")
    with pytest.raises(ConfigError, match="DRIFTLABEL_DEMO_WORKERS"):
        load_settings(DemoSettings)
    monkeypatch.delenv("DRIFTLABEL_DEMO_WORKERS")
    bad = tmp_path / "bad.toml"
    bad.write_text("[demo]\nunknown_key = 1\n")
    with pytest.raises(ConfigError, match=r"key 'unknown_key' of section \[demo\] in the config file"):
        load_settings(DemoSettings, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(DemoSettings, tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[demo\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(DemoSettings, broken)


def test_a_mistyped_environment_variable_is_refused_with_the_likely_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pydantic-settings ignores unknown variables: a typo would leave the default in force unnoticed
    monkeypatch.setenv("DRIFTLABEL_DEMO_WORKRES", "4")
    with pytest.raises(
        ConfigError, match="DRIFTLABEL_DEMO_WORKRES \\(did you mean DRIFTLABEL_DEMO_WORKERS\\?\\)"
    ):
        load_settings(DemoSettings)
    monkeypatch.delenv("DRIFTLABEL_DEMO_WORKRES")
    monkeypatch.setenv("DRIFTLABEL_DATA_DIR", "/data")  # not a concern's prefix: not this class's business
    assert load_settings(DemoSettings).workers == 1
