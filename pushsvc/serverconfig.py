"""Which Hypercorn configuration `pushsvc serve` uses, and loading it with clear errors.

In order: the file given with ``--config``, else ``./hypercorn.toml`` in the working
directory, else the defaults shipped inside the package (``pushsvc/hypercorn.toml``, the
repository's ``hypercorn.toml`` itself: a symbolic link, copied into the wheel as package
data).  `pushsvc serve` logs which one it took.  A missing or unreadable file, invalid
TOML, or a key Hypercorn does not know (a typo would otherwise be ignored silently) is a
`ConfigError` naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from .config import ConfigError

LOCAL_FILE = "hypercorn.toml"


@dataclass(frozen=True)
class ConfigSource:
    """A Hypercorn TOML file and why it was chosen."""

    path: str
    origin: str  # "--config", "./hypercorn.toml" or "packaged defaults"


def locate(path: str | None) -> ConfigSource:
    if path is not None:
        return ConfigSource(path, "--config")
    if Path(LOCAL_FILE).is_file():
        return ConfigSource(str(Path(LOCAL_FILE).resolve()), "./hypercorn.toml")
    with as_file(files("pushsvc").joinpath(LOCAL_FILE)) as packaged:
        return ConfigSource(str(packaged), "packaged defaults")


def read_toml(source: ConfigSource) -> dict[str, Any]:
    where = f"{source.origin} {source.path}" if source.origin == "--config" else source.path
    try:
        with open(source.path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file; give an existing Hypercorn TOML file, or leave "
                          "--config out to use ./hypercorn.toml or the packaged defaults") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; give a Hypercorn TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    unknown = sorted(key for key in data if key.startswith("_") or not hasattr(Config, key))
    if unknown:
        raise ConfigError(f"{where}: unknown Hypercorn setting(s) {', '.join(map(repr, unknown))} "
                          "(see https://hypercorn.readthedocs.io/en/latest/how_to_guides/configuring.html)")
    return data


def load(source: ConfigSource) -> Config:
    data = read_toml(source)
    try:
        return Config.from_mapping(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source.path}: an invalid value: {exc}") from None
