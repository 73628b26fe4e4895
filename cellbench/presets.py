"""Presets: named argument sets for each method, stored as TOML in the top-level ``models/``.

``models/<method>.toml`` holds one table per preset (``[quick]``, ``[paper]``). A preset is data,
not a subclass (cf. timm's pretrained configs).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError


def models_dir() -> Path:
    """``$CELLBENCH_MODELS_DIR`` if set, else the ``models/`` folder beside the package."""
    env = os.environ.get("CELLBENCH_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def preset_names(method: str) -> list[str]:
    path = models_dir() / f"{method}.toml"
    if not path.exists():
        return []
    return sorted(_read(path))


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset file ({exc}); fix its TOML syntax") from None


def load_preset(method: str, name: str | None) -> dict[str, Any]:
    """The arguments of preset ``name`` for ``method`` (``{}`` when ``name`` is None)."""
    if name is None:
        return {}
    path = models_dir() / f"{method}.toml"
    if not path.exists():
        raise ConfigError(f"method {method!r} has no presets ({path} is missing); omit --preset")
    table = _read(path)
    if name not in table or not isinstance(table[name], dict):
        raise ConfigError(
            f"{path}: no preset {name!r}; available: {', '.join(sorted(table)) or 'none'}"
        )
    return dict(table[name])
