"""Settings: one frozen pydantic-settings class per concern, built by a factory, never at import time.

Each concern (Kafka, embedder, experts, judge, metrics) subclasses :class:`DriftlabelSettings` with its own
``env_prefix`` (``DRIFTLABEL_KAFKA_``, ``DRIFTLABEL_JUDGE_`` ...) and ``section`` name. Values come, highest
priority first, from keyword overrides, the environment, then one section of a config file (TOML or YAML;
path given to :func:`load_settings` or in ``DRIFTLABEL_CONFIG``), then the defaults. Secrets are
``SecretStr`` so they never show in a repr, a log line or ``--print-config``.
"""

from __future__ import annotations

import contextvars
import difflib
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tomllib
import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from driftlabel.errors import DriftlabelError

__all__ = ["ConfigError", "DriftlabelSettings", "load_settings", "read_config_file"]

CONFIG_ENV = "DRIFTLABEL_CONFIG"
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("driftlabel_config", default=None)

S = TypeVar("S", bound="DriftlabelSettings")


class ConfigError(DriftlabelError, ValueError):
    """A setting is missing, malformed or contradictory; the message names it and where it came from."""


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a whole TOML or YAML config file into a dict of sections."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file {p} does not exist; pass an existing .toml/.yaml file or unset {CONFIG_ENV}"
        )
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        else:
            raise ConfigError(f"config file {p}: unknown format {p.suffix!r}; use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {p} is not valid {p.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(data).__name__}")
    return data


class _FileSection(PydanticBaseSettingsSource):
    """Settings source: this concern's section of the config file, if any."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get() or os.environ.get(CONFIG_ENV)
        if not path:
            return {}
        section = getattr(self.settings_cls, "section", "")
        values = read_config_file(path).get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: section [{section}] must be a table of settings")
        return values


class DriftlabelSettings(BaseSettings):
    """Base of every concern's settings: frozen, unknown keys refused, file section as the lowest source."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix="DRIFTLABEL_")
    section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_section = _FileSection(settings_cls)
        return (init_settings, env_settings, dotenv_settings, file_section, file_secret_settings)


def _refuse_unknown_env(cls: type[DriftlabelSettings]) -> None:
    """A ``DRIFTLABEL_<CONCERN>_*`` variable that names no setting is a typo: pydantic-settings would
    ignore it silently (a mistyped key in the config file is refused already), so refuse it here."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if prefix == "DRIFTLABEL_":
        return
    known = {prefix + name.upper() for name in cls.model_fields}
    unknown = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(
            f"unknown {cls.section or cls.__name__} setting(s) in the environment: {', '.join(hints)}; "
            f"unset them or fix the name (`driftlabel worker --print-config` lists every setting)"
        )


def load_settings(cls: type[S], config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> S:
    """Build one concern's settings from overrides, environment and config file, with readable errors."""
    _refuse_unknown_env(cls)
    token = _config_file.set(Path(config_file) if config_file else None)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")

        def where(e: Any) -> str:
            name = "_".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":  # the environment's unknown names are refused above
                return f"key {name!r} of section [{cls.section}] in the config file (not a setting)"
            return f"{prefix}{name.upper()} (or [{cls.section}] {name} in the config file)"

        problems = "; ".join(f"{where(e)}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {cls.section or cls.__name__} settings: {problems}") from exc
    finally:
        _config_file.reset(token)
