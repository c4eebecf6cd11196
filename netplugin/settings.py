"""The one settings loader of netplugin and drctl: a settings dataclass is
filled from its defaults < a TOML file < ``<PREFIX><FIELD>`` variables <
flags, later winning, then validated.

The file is the one named (a flag, or ``<PREFIX>CONFIG``), else the tool's
default path. A missing default file is fine; a missing file that was named
is an error, in both tools. Each tool keeps its own dataclass
(config.Config, backup/config.BackupConfig).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from .errors import InvalidRequest


class Settings(Protocol):
    def validate(self) -> Any: ...


S = TypeVar("S", bound=Settings)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def coerce(name: str, kind: Any, raw: Any) -> Any:
    """Turn a value from the file, the environment or a flag into the field's type."""
    if raw is None:
        return None
    text = str(kind)
    if "list" in text:
        if isinstance(raw, list):
            return [str(x) for x in raw]
        return [part.strip() for part in str(raw).split(",") if part.strip()]
    if text.startswith("bool") or kind is bool:
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise InvalidRequest(f"setting {name} must be true or false, not {raw!r}")
    if text.startswith("int") or kind is int:
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise InvalidRequest(f"setting {name} must be a whole number, not {raw!r}") from None
    if text.startswith("float") or kind is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise InvalidRequest(f"setting {name} must be a number, not {raw!r}") from None
    return str(raw)


def load_settings(cls: type[S], prefix: str, default_file: str, path: str | None = None,
                  env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> S:
    """Build cls: defaults < file < environment (prefix + FIELD) < overrides (flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # every S is a dataclass
    path = path or env.get(prefix + "CONFIG")
    file_path = path or default_file
    if os.path.exists(file_path):
        try:
            with open(file_path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest(f"cannot read config file {file_path}: {exc}") from None
        for key, raw in data.items():
            key = key.replace("-", "_")
            if key not in known:
                raise InvalidRequest(f"config file {file_path}: unknown setting {key!r}")
            values[key] = coerce(key, known[key], raw)
    elif path:
        raise InvalidRequest(f"config file {path} does not exist")
    for key, kind in known.items():
        raw = env.get(prefix + key.upper())
        if raw is not None and raw != "":
            values[key] = coerce(key, kind, raw)
    for key, raw in (overrides or {}).items():
        if key not in known:
            raise InvalidRequest(f"unknown setting {key!r}")
        if raw is not None:
            values[key] = coerce(key, known[key], raw)
    return cls(**values).validate()
