"""The results schema: tidy records, stored with the run's metadata as JSON and CSV.

One :class:`Record` is one measurement (run, method, metric, value, split, cell type, n, and an
optional confidence interval). A results file carries the config, the package version, the git
commit (with a dirty flag) and the machine, so ``compare`` and ``report`` only read files.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CellbenchError

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Record:
    """One measurement. ``cell_type`` is ``"all"`` for an overall figure; ``region`` likewise."""

    run: str
    method: str
    metric: str
    value: float
    split: str = "test"
    cell_type: str = "all"
    n: int = 0
    ci_low: float | None = None
    ci_high: float | None = None
    region: str = "all"
    unit: str = ""
    higher_is_better: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("value", "ci_low", "ci_high"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("value", "ci_low", "ci_high"):
            v = kw.get(k)
            if v is None and k == "value":
                kw[k] = float("nan")
            elif isinstance(v, str):
                kw[k] = float(v)
        return cls(**kw)


def git_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path``."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info() -> dict[str, Any]:
    """A description of the machine and the main library versions."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_metadata(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything stored beside a run's records."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cellbench_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": machine_info(),
        "config": config or {},
    }


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def save_results(directory: str | os.PathLike, records: list[Record], metadata: dict[str, Any]) -> Path:
    """Write ``results.json`` (metadata + records) and ``results.csv`` (records) atomically."""
    d = Path(directory)
    payload = {"metadata": metadata, "records": [r.to_dict() for r in records]}
    _atomic_write_text(d / RESULTS_JSON, json.dumps(payload, indent=1, sort_keys=False, default=str))
    _atomic_write_text(d / RESULTS_CSV, records_to_frame(records).to_csv(index=False))
    return d / RESULTS_JSON


def load_results(path: str | os.PathLike) -> tuple[list[Record], dict[str, Any]]:
    """Read records and metadata from a results file or the folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
        records = [Record.from_dict(r) for r in payload["records"]]
    except FileNotFoundError:
        raise CellbenchError(f"{p}: no results file; run `cellbench run-all` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CellbenchError(f"{p}: not a cellbench results file ({exc}); re-run the benchmark") from None
    return records, payload.get("metadata", {})


def records_to_frame(records: list[Record]):
    """Records as a tidy ``pandas.DataFrame`` (``extra`` serialized as JSON text)."""
    import pandas as pd

    cols = [f.name for f in dataclasses.fields(Record)]
    rows = []
    for r in records:
        d = dataclasses.asdict(r)
        d["extra"] = json.dumps(d["extra"], sort_keys=True, default=str) if d["extra"] else ""
        rows.append(d)
    return pd.DataFrame(rows, columns=cols)


def save_parquet(path: str | os.PathLike, records: list[Record]) -> Path:
    """Write records as Parquet (needs ``pyarrow``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    records_to_frame(records).to_parquet(p, index=False)
    return p
