"""The stage cache: a key made of content and configuration -> a folder ``RUN_DIR/stages/<name>-<hash>/``.

A stage is a unit of work whose result is a few files. It is *done* when its folder holds
``DONE``; ``stage.json`` (written just before ``DONE``) records the stage's configuration and the
size and SHA-256 of every file it wrote. Rules:

* **Keys from content and configuration, never from paths or clocks**: the same work given a
  relative or an absolute run folder, or run on another day, hits the same stage. Paths of
  other stages never enter a key; their keys do.
* **Versions are derived, not bumped by hand**: :func:`source_version` hashes the source text of
  the modules a stage's results depend on (with the package version), so editing a metric
  re-evaluates, and nothing else does.
* **Speed keys carry the host** (:func:`host_info`): timings of another machine, another CPU,
  another thread count or another GPU are never reused.
* **No side effects on read**: asking whether a stage is done creates nothing.
* **Order-free stages**: :func:`stage_scope` runs a stage's work under the thread policy of its
  kind with the global random generators seeded from the run's seed and the stage's key (and
  restored afterwards), so a stage computes the same bits whichever stages ran before it and in
  whichever process (``run-all --jobs``).
* **Atomic writes, checked loads**: every file goes through :func:`cellbench.fs.atomic_path`
  (folders through a temporary sibling and one rename) before ``DONE``; on first use in a
  process a done stage's files are checked against ``stage.json``: a missing, truncated or
  corrupt file logs a warning and the stage is redone.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import __version__
from ..fs import atomic_dir, atomic_path, atomic_write, sha256_file

log = logging.getLogger(__name__)

__all__ = ["Stage", "StageCache", "config_hash", "source_version", "host_info", "stage_scope", "stage_seed"]

DONE = "DONE"
RECORD = "stage.json"


def config_hash(config: Any) -> str:
    """12 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@functools.cache
def source_version(*modules: str) -> str:
    """A version derived from code: hash of the package version and the source of ``modules``."""
    h = hashlib.sha256(__version__.encode())
    for name in modules:
        h.update(name.encode())
        h.update(inspect.getsource(importlib.import_module(name)).encode())
    return h.hexdigest()[:12]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_info(device: str, *, threads: int | None = None) -> dict[str, Any]:
    """What a timing depends on: hostname, CPU model, torch threads (``threads``, default the current
    count), and the device's name."""
    import torch

    name = "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    return {"hostname": platform.node(), "cpu": _cpu_model(),
            "torch_threads": int(threads) if threads is not None else torch.get_num_threads(),
            "device": device, "device_name": name}


def stage_seed(key: str, seed: int) -> int:
    """The global random generators' seed of a stage: its key (hex) mixed with the run's seed, < 2**32."""
    h = hashlib.sha256(f"{key}:{int(seed)}".encode()).hexdigest()
    return int(h[:8], 16)


@contextlib.contextmanager
def stage_scope(stage: Stage | str, kind: str, seed: int) -> Iterator[int]:
    """Run a stage's work with :func:`cellbench.threads.thread_policy` ``(kind)`` intra-op threads and
    the global generators (``random``, NumPy's, torch's) seeded by :func:`stage_seed`; threads and
    generator states are restored afterwards, so a stage nested in another leaves no trace. Yields
    the thread count."""
    import numpy as np
    import torch

    from ..threads import limit_threads, thread_policy

    key = stage.key if isinstance(stage, Stage) else str(stage)
    s = stage_seed(key, seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    start, wall0, cpu0 = time.time(), time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=devices), limit_threads(thread_policy(kind)) as n:
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        try:
            yield n
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            if isinstance(stage, Stage):
                _log_timing(stage, kind, n, start, time.perf_counter() - wall0, time.process_time() - cpu0)


#: The run folder's stage timing log (one JSON object per line; docs/run-folder.md).
TIMINGS = "timings.jsonl"


def _log_timing(stage: Stage, kind: str, threads: int, start: float, wall: float, cpu: float) -> None:
    """Append one line to ``RUN_DIR/timings.jsonl``: where a run's time went (wall and CPU seconds per
    stage, whichever process ran it). Lines of a few hundred bytes are appended with one ``write`` in
    ``O_APPEND`` mode, which Linux keeps whole when worker processes append at once. Timing is
    bookkeeping: a failure to write it is logged, never raised."""
    line = json.dumps({"stage": stage.dir.name, "kind": kind, "pid": os.getpid(), "threads": threads,
                       "start": round(start, 3), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}) + "\n"
    try:
        fd = os.open(stage.dir.parent.parent / TIMINGS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("stage timings not recorded (%s)", exc)


class Stage:
    """One cached unit of work (see the module docstring). Creating it touches nothing on disk."""

    def __init__(self, root: Path, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.key = config_hash({"name": name, **config})
        self.dir = root / f"{name}-{self.key}"
        self._files: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"Stage({self.dir.name})"

    @property
    def done(self) -> bool:
        return (self.dir / DONE).is_file()

    def path(self, rel: str) -> Path:
        return self.dir / rel

    # -- writing ------------------------------------------------------------------------------------
    def write_file(self, rel: str, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` writes the file at a temporary name; it replaces ``rel`` atomically."""
        target = self.dir / rel
        with atomic_path(target) as tmp:
            write(tmp)
        self._track(rel)
        return target

    def write_json(self, rel: str, obj: Any) -> Path:
        atomic_write(self.dir / rel, json.dumps(obj, indent=1, default=str))
        self._track(rel)
        return self.dir / rel

    def write_dir(self, rel: str, write: Callable[[Path], Any]) -> Path:
        """``write(tmp_dir)`` fills a temporary sibling folder, renamed to ``rel`` in one step."""
        target = self.dir / rel
        with atomic_dir(target) as tmp:
            write(tmp)
        for f in sorted(target.rglob("*")):
            if f.is_file():
                self._track(f.relative_to(self.dir).as_posix())
        return target

    def _track(self, rel: str) -> None:
        p = self.dir / rel
        self._files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}

    def finish(self, **info: Any) -> None:
        """Record the stage (config, files with size and SHA-256, ``info``) and mark it done."""
        record = {"name": self.name, "key": self.key, "config": self.config, "files": self._files, **info}
        atomic_write(self.dir / RECORD, json.dumps(record, indent=1, default=str))
        atomic_write(self.dir / DONE, "")

    # -- reading ------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        return json.loads((self.dir / RECORD).read_text(encoding="utf-8"))

    def load_json(self, rel: str) -> Any:
        return json.loads((self.dir / rel).read_text(encoding="utf-8"))

    def problems(self) -> list[str]:
        """What is wrong with a done stage's files (empty when every recorded file checks out)."""
        try:
            files = self.record()["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [f"{RECORD} unreadable ({exc})"]
        out = []
        for rel, want in files.items():
            p = self.dir / rel
            if not p.is_file():
                out.append(f"{rel} missing")
            elif p.stat().st_size != want.get("size"):
                out.append(f"{rel} has {p.stat().st_size} bytes, {want.get('size')} expected")
            elif sha256_file(p) != want.get("sha256"):
                out.append(f"{rel} is corrupt (SHA-256 differs)")
        return out

    def invalidate(self) -> None:
        """Forget that the stage is done (its files stay until it is redone)."""
        for name in (DONE, RECORD):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()


class StageCache:
    """The stages of one run folder: ``RUN_DIR/stages/``. Done stages are checked once per process."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.root = Path(run_dir) / "stages"
        self._checked: set[str] = set()

    def stage(self, name: str, config: dict[str, Any]) -> Stage:
        return Stage(self.root, name, config)

    def ready(self, stage: Stage) -> bool:
        """Whether ``stage`` is done and its files are intact (a broken stage is invalidated)."""
        if not stage.done:
            return False
        if stage.key in self._checked:
            return True
        problems = stage.problems()
        if problems:
            log.warning("stage %s: %s; redoing it", stage.dir.name, "; ".join(problems))
            stage.invalidate()
            return False
        self._checked.add(stage.key)
        return True

    def finish(self, stage: Stage, **info: Any) -> None:
        """Mark ``stage`` done (its files were just written and hashed: no re-check needed)."""
        stage.finish(**info)
        self._checked.add(stage.key)

    def begin(self, stage: Stage) -> Stage:
        """Prepare ``stage`` for (re)doing: its folder exists and it is not marked done."""
        stage.invalidate()
        stage.dir.mkdir(parents=True, exist_ok=True)
        self._checked.discard(stage.key)
        return stage
