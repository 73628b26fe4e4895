"""Data specifications accepted by ``--data``.

=========================  ====================================================================
``synthetic[:k=v,...]``    the embedded default: pairs from the two-system simulator, in memory
                           (keys: ``n``, ``size``, ``seed``, ``x``, ``y`` system names)
``paired:ROOT`` or ROOT    a paired dataset folder (X/, Y/, optional masks/, splits.csv)
``resim:DIR``              a labelled real folder (PBC layout) re-simulated into pairs
``cross:x=DIR,y=DIR``      two labelled single-system folders, no pairs (the cross-system track)
``labelled:ROOT``          one labelled folder (classifier training only)
=========================  ====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .folders import is_paired_root

KINDS = ("synthetic", "paired", "resim", "cross", "labelled")


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: Path | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "synthetic":
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            return "synthetic" + (f":{opts}" if opts else "")
        if self.kind == "cross":
            return "cross:" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.kind}:{self.path}"


def _kv(text: str, spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ConfigError(f"--data {spec!r}: expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a ``--data`` value (see the module docstring)."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if kind == "synthetic":
        opts = _kv(rest, spec)
        unknown = set(opts) - {"n", "test_n", "size", "seed", "x", "y"}
        if unknown:
            raise ConfigError(f"--data {spec!r}: unknown option(s) {sorted(unknown)}; use n, test_n, size, seed, x, y")
        return DataSpec("synthetic", None, opts)
    if kind == "cross":
        opts = _kv(rest, spec)
        if not {"x", "y"} <= set(opts):
            raise ConfigError(f"--data {spec!r}: cross needs x=DIR,y=DIR")
        for key in ("x", "y"):
            if not Path(opts[key]).is_dir():
                raise ConfigError(f"--data {spec!r}: {key} folder {opts[key]} not found")
        return DataSpec("cross", None, opts)
    if sep and kind in ("paired", "resim", "labelled"):
        path = Path(rest)
    elif sep and len(kind) > 1 and kind not in KINDS:
        raise ConfigError(f"--data {spec!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)} or a folder")
    else:
        path, kind = Path(spec), ""
    if not path.is_dir():
        raise ConfigError(f"--data {spec!r}: folder {path} not found")
    if not kind:
        kind = "paired" if is_paired_root(path) else "labelled"
    if kind == "paired" and not is_paired_root(path):
        raise ConfigError(f"--data {spec!r}: {path} has no X/ and Y/ sub-folders (see README 'Data formats')")
    return DataSpec(kind, path, {})
