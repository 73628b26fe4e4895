"""Typed, range-checked option values: one place that turns user text into checked values.

Every function raises :class:`~cellbench.errors.ConfigError` with one line naming the option and
saying what is accepted, so a bad option stops a command before any work starts.

    >>> parse_bool("no", "realism")
    False
    >>> check_int("0", "size", min=16)
    Traceback (most recent call last):
    ...
    cellbench.errors.ConfigError: size=0: must be an integer >= 16
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

__all__ = ["parse_bool", "check_int", "check_float", "check_choice", "check_seed", "resolve_device", "parse_set_items",
           "MAX_IMAGE_SIDE", "MAX_SEED"]

#: Largest image side any command accepts: a 4096x4096x3 float32 image is ~200 MB, and the
#: simulator renders spectra per pixel, so larger sides only end in a MemoryError.
MAX_IMAGE_SIDE = 4096
#: Seeds feed numpy.random.default_rng and torch.manual_seed: non-negative, below 2**32.
MAX_SEED = 2**32 - 1

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def parse_bool(value: Any, name: str) -> bool:
    """``True``/``False`` from a bool, 0/1, or the words true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r}: must be a boolean (true/false, yes/no, on/off, 1/0)")


def _bounds(min: float | None, max: float | None) -> str:
    if min is not None and max is not None:
        return f" in [{min}, {max}]"
    if min is not None:
        return f" >= {min}"
    if max is not None:
        return f" <= {max}"
    return ""


def check_int(value: Any, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """An integer (``"12"`` and ``12.0`` are accepted; ``12.5``, ``True`` and ``"x"`` are not)."""
    msg = f"{name}={value!r}: must be an integer{_bounds(min, max)}"
    if isinstance(value, bool):
        raise ConfigError(msg)
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(msg) from None
    if not math.isfinite(f) or f != int(f):
        raise ConfigError(msg)
    v = int(f)
    if (min is not None and v < min) or (max is not None and v > max):
        raise ConfigError(msg)
    return v


def check_float(value: Any, name: str, *, min: float | None = None, max: float | None = None,
                min_exclusive: bool = False) -> float:
    """A finite float within bounds (``min_exclusive``: strictly greater than ``min``)."""
    bound = _bounds(min, max).replace(">=", ">") if min_exclusive else _bounds(min, max)
    msg = f"{name}={value!r}: must be a finite number{bound}"
    if isinstance(value, bool):
        raise ConfigError(msg)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(msg) from None
    if not math.isfinite(v):
        raise ConfigError(msg)
    if min is not None and (v < min or (min_exclusive and v == min)):
        raise ConfigError(msg)
    if max is not None and v > max:
        raise ConfigError(msg)
    return v


def check_seed(value: Any, name: str = "--seed") -> int:
    """A seed: an integer in [0, 2**32 - 1]."""
    return check_int(value, name, min=0, max=MAX_SEED)


def check_choice(value: Any, name: str, choices: list[str] | tuple[str, ...]) -> str:
    """One of ``choices`` (with a "did you mean" hint)."""
    text = str(value)
    if text in choices:
        return text
    import difflib

    close = difflib.get_close_matches(text, list(choices), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{name}={value!r}: choose one of {', '.join(choices)}{hint}")


def resolve_device(value: Any, name: str = "--device") -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has."""
    text = str(value).strip().lower()
    if text == "cpu":
        return "cpu"
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{name} {value}: no CUDA device is available on this machine; use --device cpu")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{name} {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return text
    raise ConfigError(f"{name} {value!r}: unknown device; use cpu, cuda or cuda:N")


def parse_set_items(items: Iterable[str] | None) -> dict[str, Any]:
    """``--set key=value`` items; values parse as TOML (numbers, booleans, strings, lists), else as text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()
    return out
