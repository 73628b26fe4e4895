"""Presets: named argument sets for each method, stored as TOML in the top-level ``models/``.

``models/<method>.toml`` holds one table per preset (``[quick]``, ``[paper]``). A preset is data,
not a subclass (cf. timm's pretrained configs).

The top-level ``models/`` of the repository is the one copy that is edited (and kept in git). A
built wheel carries a copy made at build time (``setup.py`` copies ``models/*.toml`` into
``cellbench/_presets/``), so an installed package finds its presets without the repository; see
:func:`models_dir` for the order of the places searched.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: the folder of a built package that holds the copy of ``models/*.toml`` (made by setup.py)
PACKAGED_PRESETS = "_presets"


def models_dir() -> Path:
    """The folder of the preset files, the first of:

    1. ``$CELLBENCH_MODELS_DIR`` when set;
    2. the repository's ``models/`` when cellbench runs from a checkout (``models/`` and
       ``pyproject.toml`` beside the package folder: an editable install or ``PYTHONPATH``);
    3. the presets shipped in the installed package (``cellbench/_presets/``).
    """
    env = os.environ.get("CELLBENCH_MODELS_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "models").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "models"
    shipped = package / PACKAGED_PRESETS
    if shipped.is_dir():
        return shipped
    raise ConfigError(f"no presets found: neither {checkout / 'models'} (a checkout) nor {shipped} "
                      "(an installed package); set CELLBENCH_MODELS_DIR to a folder of <method>.toml files")


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
