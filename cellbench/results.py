"""The results schema: tidy records, stored with the run's metadata as JSON and CSV.

One :class:`Record` is one measurement (run, method, metric, value, split, cell type, n, and an
optional confidence interval). A results file carries the config, the package version, the git
commit (with a dirty flag) and the machine, so ``compare`` and ``report`` only read files.

Records are made through the metric registry (:func:`cellbench.eval.metrics.make_record`), which
fills the unit and direction; :func:`save_results` refuses metrics its registry does not know.
A record's ``role`` says what kind of row it is: ``"method"`` (a ranked normalizer) or
``"reference"`` (the ceiling and the classifier's own accuracy: shown, never ranked).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CellbenchError
from .fs import atomic_write

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SCHEMA_VERSION = 1
#: Row roles: a ranked method, or a reference row shown for context (never ranked).
ROLES = ("method", "reference")
#: Results files written before ``role`` existed named their reference rows by these methods.
LEGACY_REFERENCE_METHODS = ("ceiling", "classifier")


@dataclass(frozen=True)
class Record:
    """One measurement. ``cell_type`` is ``"all"`` for an overall figure; ``region`` likewise.

    ``role`` is ``"method"`` for a normalizer's row and ``"reference"`` for a row shown for context
    (``method`` then names the reference, e.g. ``"ceiling"`` or ``"classifier"``).
    """

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
    role: str = "method"

    @property
    def reference(self) -> bool:
        return self.role == "reference"

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
        if "role" not in kw:  # a results file from before roles: the reference rows had fixed names
            kw["role"] = "reference" if kw.get("method") in LEGACY_REFERENCE_METHODS else "method"
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


def save_results(directory: str | os.PathLike, records: list[Record], metadata: dict[str, Any], *,
                 metrics: Container[str]) -> Path:
    """Write ``results.json`` (metadata + records) and ``results.csv`` (records) atomically.

    ``metrics`` is the metric registry (:data:`cellbench.eval.metrics.METRICS`): a record whose
    metric it does not hold, or with an unknown ``role``, is refused before anything is written.
    """
    for r in records:
        if r.metric not in metrics:
            raise CellbenchError(f"record {r.method}/{r.metric}: metric {r.metric!r} is not registered in "
                                 "cellbench.eval.metrics; register it (unit, direction) before storing it")
        if r.role not in ROLES:
            raise CellbenchError(f"record {r.method}/{r.metric}: role {r.role!r} is not one of {', '.join(ROLES)}")
    d = Path(directory)
    payload = {"metadata": metadata, "records": [r.to_dict() for r in records]}
    atomic_write(d / RESULTS_JSON, json.dumps(payload, indent=1, sort_keys=False, default=str))
    atomic_write(d / RESULTS_CSV, records_to_frame(records).to_csv(index=False))
    return d / RESULTS_JSON


def fingerprint_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``"key=A vs B"`` for each field where two fingerprints (:func:`check_fingerprints`) differ."""
    out = []
    for part in sorted(set(a) | set(b)):
        pa, pb = a.get(part), b.get(part)
        if pa == pb:
            continue
        if isinstance(pa, dict) and isinstance(pb, dict):
            keys = [k for k in sorted(set(pa) | set(pb)) if k != "hash" and pa.get(k) != pb.get(k)]
            out += [f"{k}={pa.get(k)} vs {pb.get(k)}" for k in keys] or [f"{part} {pa.get('hash')} vs {pb.get('hash')}"]
        else:
            out.append(f"{part}={pa} vs {pb}")
    return out


def check_fingerprints(metadata: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse a results file whose rows were computed on different data, splits or classifiers.

    ``metadata["fingerprints"]`` maps each method to the fingerprint of what it was evaluated on
    (``{"data": {...}, "classifier": {...}}``); results files without fingerprints (older runs)
    are accepted as they are.
    """
    fps = metadata.get("fingerprints") if isinstance(metadata, dict) else None
    if not isinstance(fps, dict) or not fps:
        return
    methods = sorted(fps)
    first = fps[methods[0]]
    for m in methods[1:]:
        diff = fingerprint_differences(first, fps[m])
        if diff:
            raise CellbenchError(
                f"{path}: rows for {m} were computed on another test set or classifier than those for "
                f"{methods[0]} ({'; '.join(diff)}); re-run run-all into a fresh folder")



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
