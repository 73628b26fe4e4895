"""Speed and memory of a normalizer's ``transform``: latency, throughput, peak memory.

:func:`profile_normalizer` times ``normalizer.transform`` on random images of the evaluated size:

* **latency** at batch size 1: median and 90th percentile over ``repeats`` timed calls (ms);
* **throughput** at the best of ``batch_sizes`` (images/s = batch size / median call time);
* **peak memory** of the calls, the largest over the batch sizes tried, measured from after the
  input batch was allocated (so the input is excluded and outputs and intermediates count): on
  CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before (tensors the
  transform allocates, not the caching allocator's reserve); on CPU the peak increase of the
  process's resident set size (RSS) during the first (untimed warm-up) call of each batch size,
  sampled every 2 ms from ``/proc/self/statm`` by a background thread (Linux; elsewhere the increase of
  ``resource.getrusage(...).ru_maxrss``, which only sees new lifetime peaks), after glibc's
  ``malloc_trim(0)`` has returned freed heap pages to the OS. RSS includes
  allocator caches and pages freed but not returned to the OS, so it is an upper-bound-ish
  figure good for comparing methods, not an exact allocation count.

``max(warmup, 1)`` untimed calls precede every timed series (lazy initialisation, cuDNN autotuning,
allocator growth are excluded). A time ``budget`` per method (seconds) bounds the whole profile:
the timed series stop early when it runs out (at least one timed call each), and larger batch
sizes are skipped, so a slow method never stalls ``run-all``; the result says so
(``truncated``). CUDA timings synchronize before and after each call.

**Conditions and the disturbed rule.** Every profile carries the conditions of its figures: the
rounds and the spread (90th percentile / median) of each timed series, the process CPU time
against the wall time of the timed calls, the torch threads, the machine's CPUs and the 1-minute
load average before and after. :func:`disturbance` names why a measurement should not be
trusted, and :func:`speed_conditions` is what every speed record carries in ``extra``. A
measurement is **disturbed** when

* other processes used more than :data:`OTHERS_MARGIN` (0.5) CPU cores on average during the
  measurement: the machine's busy CPU time over the measurement window (``/proc/stat``) minus this
  process's own CPU time, per wall second (``others_cpu_cores``; a measurement shorter than 4 clock
  ticks per CPU, which ``/proc/stat`` cannot resolve, is followed by a wait that completes that window).
  Where ``/proc/stat`` cannot be read,
  the 1-minute load average before or after is used instead: disturbed when it exceeds the machine's
  CPUs by more than :data:`LOAD_MARGIN` (0.5). (The load average lags by about a minute and counts
  the measuring threads themselves, so right after ``run-all``'s parallel stages it reads high on a
  quiet machine; the direct measurement does not.);
* the spread p90/median of the series exceeds :data:`MAX_SPREAD` (1.5) over at least
  :data:`MIN_SPREAD_ROUNDS` (3) rounds: a tenth of the calls took 1.5x the median or longer, which a
  quiet machine does not do to a fixed computation;
* on the CPU, the timed calls got less than :data:`MIN_CPU_PER_WALL` (0.5) CPU seconds per wall
  second: a compute-bound call that gets less than half a core waited for one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..results import machine_info
from ..threads import usable_cores

log = logging.getLogger(__name__)

__all__ = ["profile_normalizer", "profile_function", "choose_engine", "ENGINE_MAX_DE", "ENGINE_FP32_TOL",
           "format_profile", "disturbance", "speed_conditions",
           "LOAD_MARGIN", "OTHERS_MARGIN", "MAX_SPREAD", "MIN_SPREAD_ROUNDS", "MIN_CPU_PER_WALL"]

#: Disturbed: the 1-minute load average exceeded the machine's CPUs by more than this (module docstring).
LOAD_MARGIN = 0.5
#: CPU cores other processes may use on average during a measurement before it counts as disturbed.
OTHERS_MARGIN = 0.5
#: Disturbed: a timed series' p90/median exceeded this ...
MAX_SPREAD = 1.5
#: ... over at least this many rounds (fewer rounds say nothing about the spread).
MIN_SPREAD_ROUNDS = 3
#: Disturbed (CPU only): the timed calls got fewer CPU seconds per wall second than this.
MIN_CPU_PER_WALL = 0.5


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so the next RSS increase shows new allocations
    instead of reusing pages freed by earlier calls. A no-op where glibc is absent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RSSSampler:
    """Peak resident set size (bytes) over a ``with`` block, sampled by a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.use_proc = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
        self.start_rss = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        if self.use_proc:
            with open("/proc/self/statm", "rb") as fh:
                return int(fh.read().split()[1]) * self.page
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return int(kb) * (1 if sys.platform == "darwin" else 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> _RSSSampler:
        _malloc_trim()
        self.start_rss = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def increase_mb(self) -> float:
        return max(0, self.peak - self.start_rss) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def profile_function(
    fn,
    *,
    size: int = 256,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 60.0,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Profile ``fn(images) -> images`` on random ``(B, 3, size, size)`` batches; see the module doc.

    Returns
    -------
    dict
        ``latency_ms_b1`` (median, ms), ``latency_ms_b1_p90`` (ms), ``throughput_ips`` (images/s at
        the best batch size), ``batch_size`` (that size), ``peak_mem_mb`` (MiB),
        ``throughput_by_batch`` ({batch size: images/s}), ``n_latency`` (timed batch-1 calls),
        ``truncated`` (the budget or memory cut the profile short), ``budget_s``, ``device``,
        ``device_name``, ``image_size``, ``warmup``, ``machine`` (:func:`cellbench.results.machine_info`,
        including ``torch_threads``); and the conditions of the figures: ``latency_by_batch``
        ({batch size: median_ms, p90_ms, rounds, spread (p90/median)}), ``spread_p90_median`` (batch
        1), ``cpu_time_s`` / ``wall_time_s`` / ``cpu_per_wall`` (process CPU time over wall time of
        the timed calls: about the number of busy threads; well below the thread count means the
        calls waited, e.g. for a busy machine), ``threads``, ``cpu_count`` and ``load_avg_1min``
        ({"start", "end"}: the 1-minute load average before and after the measurement).

    ``threads`` sets torch's intra-op thread count for the profile (restored afterwards); None
    leaves it as it is. On a busy machine more threads can be much slower (they synchronise at
    every operation), so record the setting with the figures.
    """
    if threads is not None:
        old = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return profile_function(fn, size=size, device=device, batch_sizes=batch_sizes, warmup=warmup,
                                    repeats=repeats, max_seconds=max_seconds, seed=seed)
        finally:
            torch.set_num_threads(old)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    sizes = sorted({int(b) for b in batch_sizes if int(b) >= 1} | {1})
    gen = torch.Generator().manual_seed(seed)
    deadline = time.perf_counter() + max_seconds
    truncated = False
    timings: dict[int, list[float]] = {}

    cpu_wall = [0.0, 0.0]  # process CPU time and wall time of the timed calls

    def timed(x: torch.Tensor) -> float:
        _sync(dev)
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn(x)
        _sync(dev)
        dt = time.perf_counter() - t0
        cpu_wall[0] += time.process_time() - c0
        cpu_wall[1] += dt
        return dt

    peaks: dict[int, float] = {}
    load_start = _loadavg()
    busy_start, own_start, wall_start = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    with torch.inference_mode():
        for b in sizes:
            if b > 1 and time.perf_counter() >= deadline:
                truncated = True
                break
            x = torch.rand(b, 3, size, size, generator=gen).to(dev)
            # memory is measured from here: the input batch is excluded, the outputs are included
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                base_alloc = torch.cuda.memory_allocated(dev)
            try:
                # the first (warm-up, untimed) call runs under the RSS sampler: fresh allocations are
                # visible there, and the sampler's polling thread cannot compete with timed calls
                sampler = _RSSSampler() if dev.type != "cuda" else contextlib.nullcontext()
                with sampler:
                    fn(x)
                for _ in range(warmup - 1):
                    if time.perf_counter() >= deadline and b > 1:
                        break
                    timed(x)
                ts: list[float] = []
                while len(ts) < repeats:
                    ts.append(timed(x))
                    if time.perf_counter() >= deadline:
                        truncated = truncated or len(ts) < repeats
                        break
            except Exception as exc:  # noqa: BLE001 - OOM at a large batch ends the sweep
                if _is_oom(exc) and b > 1:
                    log.warning("batch size %d ran out of memory; stopping the throughput sweep", b)
                    truncated = True
                    del x
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    break
                raise
            timings[b] = ts
            if dev.type == "cuda":
                peaks[b] = max(0, torch.cuda.max_memory_allocated(dev) - base_alloc) / 2**20
            else:
                peaks[b] = sampler.increase_mb
            del x
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = machine_info().get("processor") or "cpu"
    # /proc/stat counts clock ticks (10 ms) per CPU: over a window of W seconds the busy time is known to
    # about cpus * tick / W cores. A profile shorter than 4 ticks per CPU (affine's, identity's) waits out the
    # rest of that window before the second reading: others' CPU next to the calls, never a tick read as cores
    cpus = os.cpu_count() or 1
    min_window = 4.0 * cpus / float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 0.1
    if busy_start is not None:
        rest = min_window - (time.perf_counter() - wall_start)
        if rest > 0:
            time.sleep(rest)
    load_end = _loadavg()
    busy_end, own_end, wall_end = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    others = None
    if busy_start is not None and busy_end is not None and wall_end > wall_start:
        others = max(0.0, (busy_end - busy_start) - (own_end - own_start)) / (wall_end - wall_start)
        others = min(others, float(cpus))
    peak_mb = max(peaks.values())
    lat = np.asarray(timings[1]) * 1000.0
    thr = {b: b / float(np.median(ts)) for b, ts in timings.items() if ts}
    best = max(thr, key=thr.get)
    by_batch = {
        int(b): {"median_ms": float(np.median(ts) * 1000.0), "p90_ms": float(np.percentile(ts, 90) * 1000.0),
                 "rounds": len(ts), "spread": float(np.percentile(ts, 90) / max(np.median(ts), 1e-12))}
        for b, ts in timings.items() if ts
    }
    return {
        "latency_by_batch": by_batch,
        "spread_p90_median": float(np.percentile(lat, 90) / max(float(np.median(lat)), 1e-12)),
        "cpu_time_s": float(cpu_wall[0]),
        "wall_time_s": float(cpu_wall[1]),
        "cpu_per_wall": float(cpu_wall[0] / cpu_wall[1]) if cpu_wall[1] > 0 else float("nan"),
        "threads": int(torch.get_num_threads()),
        "load_avg_1min": {"start": load_start, "end": load_end},
        "others_cpu_cores": None if others is None else round(float(others), 3),
        "cpu_count": int(os.cpu_count() or 1),
        "usable_cores": int(usable_cores()),
        "latency_ms_b1": float(np.median(lat)),
        "latency_ms_b1_p90": float(np.percentile(lat, 90)),
        "throughput_ips": float(thr[best]),
        "batch_size": int(best),
        "peak_mem_mb": float(peak_mb),
        "peak_mem_by_batch": {int(k): float(v) for k, v in peaks.items()},
        "throughput_by_batch": {int(b): float(v) for b, v in thr.items()},
        "n_latency": int(len(lat)),
        "truncated": bool(truncated),
        "budget_s": float(max_seconds),
        "device": dev.type,
        "device_name": device_name,
        "image_size": int(size),
        "warmup": int(warmup),
        "machine": machine_info(),
    }


def disturbance(prof: dict[str, Any], *, batch_size: int = 1) -> list[str]:
    """Why ``prof``'s figures at ``batch_size`` were disturbed (empty: not disturbed); the rule is in
    the module docstring. Reads only the profile, so tests inject timings and load values."""
    reasons = []
    cpus = int(prof.get("cpu_count") or 1)
    others = prof.get("others_cpu_cores")
    if others is not None:
        if others > OTHERS_MARGIN:
            reasons.append(f"other processes used {others:.2f} CPU cores during the measurement (> {OTHERS_MARGIN})")
    else:
        load = prof.get("load_avg_1min") or {}
        worst = max((v for v in (load.get("start"), load.get("end")) if v is not None), default=None)
        if worst is not None and worst > cpus + LOAD_MARGIN:
            reasons.append(f"load average {worst:.2f} above the machine's {cpus} CPU(s)")
    row = (prof.get("latency_by_batch") or {}).get(int(batch_size)) or (
        prof.get("latency_by_batch") or {}).get(str(batch_size)) or {}
    rounds = int(row.get("rounds", prof.get("n_latency", 0) if batch_size == 1 else 0))
    spread = row.get("spread", prof.get("spread_p90_median") if batch_size == 1 else None)
    if spread is not None and rounds >= MIN_SPREAD_ROUNDS and spread > MAX_SPREAD:
        reasons.append(f"wide spread: p90/median {spread:.2f} > {MAX_SPREAD} over {rounds} rounds")
    cpw = prof.get("cpu_per_wall")
    if prof.get("device", "cpu") == "cpu" and cpw is not None and np.isfinite(cpw) and cpw < MIN_CPU_PER_WALL:
        reasons.append(f"the timed calls got {cpw:.2f} CPU s per wall s (< {MIN_CPU_PER_WALL}): they waited for a CPU")
    return reasons


def speed_conditions(prof: dict[str, Any], *, batch_size: int = 1) -> dict[str, Any]:
    """The conditions every speed record carries in ``extra`` (the series at ``batch_size``): ``rounds``,
    ``spread_p90_median``, ``cpu_time_s``, ``wall_time_s``, ``cpu_per_wall``, ``threads``, ``cpu_count``,
    ``usable_cores``, ``load_avg_1min`` ({"start", "end"}), ``disturbed`` and ``disturbed_reasons``."""
    by = prof.get("latency_by_batch") or {}
    row = by.get(int(batch_size)) or by.get(str(batch_size)) or {}
    reasons = disturbance(prof, batch_size=batch_size)
    spread = row.get("spread", prof.get("spread_p90_median"))
    return {
        "rounds": int(row.get("rounds", prof.get("n_latency", 0))),
        "spread_p90_median": None if spread is None else round(float(spread), 4),
        "cpu_time_s": prof.get("cpu_time_s"), "wall_time_s": prof.get("wall_time_s"),
        "cpu_per_wall": prof.get("cpu_per_wall"), "threads": prof.get("threads"), "cpu_count": prof.get("cpu_count"),
        "usable_cores": prof.get("usable_cores"), "load_avg_1min": dict(prof.get("load_avg_1min") or {}),
        "others_cpu_cores": prof.get("others_cpu_cores"),
        "disturbed": bool(reasons), "disturbed_reasons": reasons,
    }


def _cpu_busy_seconds() -> float | None:
    """The machine's busy CPU seconds since boot, summed over CPUs (``/proc/stat``: user + nice + system
    + irq + softirq + steal; idle and iowait excluded), or None where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        if not fields or fields[0] != "cpu":
            return None
        v = [int(x) for x in fields[1:9]]
        v += [0] * (8 - len(v))
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        return busy / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None


def _loadavg() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def format_profile(prof: dict[str, Any]) -> str:
    """A short human-readable table of :func:`profile_function`'s result (for ``cellbench profile``)."""
    name = prof.get("method", "?") + (f" [engine {prof['engine']}]" if prof.get("engine") else "")
    lines = [
        f"{name} on {prof['device']} ({prof['device_name']}), {prof['image_size']}x{prof['image_size']}, "
        f"{prof.get('threads', '?')} torch thread(s)",
        f"  latency (batch 1): median {prof['latency_ms_b1']:.2f} ms, p90 {prof['latency_ms_b1_p90']:.2f} ms "
        f"(p90/median {prof.get('spread_p90_median', float('nan')):.2f}, {prof['n_latency']} rounds)",
        f"  {'batch':>5}  {'median ms':>10}  {'p90 ms':>9}  {'images/s':>9}  {'rounds':>6}  {'peak MiB':>8}",
    ]
    for b, row in sorted(prof.get("latency_by_batch", {}).items()):
        lines.append(f"  {b:>5}  {row['median_ms']:>10.2f}  {row['p90_ms']:>9.2f}  "
                     f"{prof['throughput_by_batch'][b]:>9.1f}  {row['rounds']:>6}  "
                     f"{prof['peak_mem_by_batch'].get(b, float('nan')):>8.1f}")
    load = prof.get("load_avg_1min") or {}
    lines.append(f"  best throughput {prof['throughput_ips']:.1f} images/s at batch {prof['batch_size']}; "
                 f"peak memory {prof['peak_mem_mb']:.1f} MiB")
    if "cpu_per_wall" in prof:
        lines.append(f"  CPU time / wall time {prof['cpu_per_wall']:.2f} over {prof['wall_time_s']:.2f} s timed; "
                     f"load average {load.get('start')} -> {load.get('end')} on {prof.get('cpu_count')} CPU(s)")
        reasons = disturbance(prof)
        if reasons:
            lines.append(f"  DISTURBED ({'; '.join(reasons)}): re-measure on a quiet machine")
    if prof.get("truncated"):
        lines.append("  truncated: the time budget (--seconds) or memory cut the profile short")
    return "\n".join(lines)


def profile_normalizer(
    normalizer,
    *,
    size: int = 256,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 60.0,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Profile a fitted :class:`~cellbench.methods.base.Normalizer`'s ``transform``.

    The normalizer is moved to ``device`` first (``normalizer.to(device)``). ``max_seconds`` is the
    budget of this method's whole profile (warm-up included). See :func:`profile_function` for the
    returned figures; ``method`` (the normalizer's registry name, if it has one) is added.
    """
    if hasattr(normalizer, "to"):
        normalizer = normalizer.to(device) or normalizer
    out = profile_function(
        normalizer.transform, size=size, device=device, batch_sizes=batch_sizes, warmup=warmup,
        repeats=repeats, max_seconds=max_seconds, seed=seed, threads=threads,
    )
    out["method"] = getattr(normalizer, "name", type(normalizer).__name__)
    return out


#: Reduced-precision engines must stay within this mean CIEDE2000 of the fp32 (eager) output (issue #17).
ENGINE_MAX_DE = 0.5
#: fp32 engines must stay within this max absolute difference of eager (issue #17).
ENGINE_FP32_TOL = 1e-3


def choose_engine(
    normalizer,
    images: torch.Tensor,
    *,
    candidates: Sequence[str],
    masks: torch.Tensor | None = None,
    max_de: float = ENGINE_MAX_DE,
    fp32_tol: float = ENGINE_FP32_TOL,
    threads: int | None = None,
    rounds: int = 5,
) -> tuple[str, list[dict[str, Any]]]:
    """The fastest inference engine of a ccGAN/pcNet normalizer that keeps its output (issue #17).

    Every engine of ``candidates`` (:data:`cellbench.nets.engines.ENGINES`) transforms ``images``
    (test inputs, ``(N, 3, H, W)`` in [0, 1]); its output is compared with eager fp32's: fp32
    engines must agree to ``fp32_tol`` (max absolute difference), reduced-precision ones (bf16, int8)
    to ``max_de`` mean CIEDE2000 (inside the WBC when ``masks`` (``(N, H, W)`` label maps) are given,
    else over the whole image). The engines that pass are timed at batch size 1 (median of
    ``rounds`` calls after a warm-up, all engines round by round, so machine load hits them alike)
    and the fastest is switched on (:func:`cellbench.nets.engines.with_engine`) and returned with
    one row per candidate: ``engine``, ``max_abs_diff``, ``ciede2000_mean``, ``ok``,
    ``latency_ms``, ``reason`` (why an engine was skipped or rejected). A normalizer without
    networks (or not on the CPU) gets ``"eager"`` and no rows.
    """
    from ..errors import ConfigError
    from ..nets.engines import FP32_ENGINES, engine_available, with_engine
    from .image import ciede2000_stats, region_mask

    if masks is not None and masks.dtype != torch.bool:  # label maps: the WBC region
        masks = region_mask(masks)
    gen = getattr(normalizer, "G_xy", None)
    if gen is None or next(gen.parameters()).device.type != "cpu":
        return "eager", []
    with_engine(normalizer, "eager")
    with torch.inference_mode():
        ref = normalizer.transform(images).float()
    rows: list[dict[str, Any]] = []
    passing: dict[str, Any] = {}
    for name in dict.fromkeys(["eager", *candidates]):
        row: dict[str, Any] = {"engine": name, "max_abs_diff": None, "ciede2000_mean": None, "ok": False,
                               "latency_ms": None, "reason": engine_available(name)}
        rows.append(row)
        if row["reason"]:
            continue
        try:
            with_engine(normalizer, name, threads=threads, calibration=images if name == "int8" else None)
            with torch.inference_mode():
                out = normalizer.transform(images).float()
        except (ConfigError, RuntimeError, ImportError) as exc:
            row["reason"] = f"{type(exc).__name__}: {exc}"
            continue
        row["max_abs_diff"] = float((out - ref).abs().max())
        de = ciede2000_stats(out, ref, masks=masks)["mean"]
        row["ciede2000_mean"] = float(np.nanmean(de)) if np.isfinite(de).any() else float("nan")
        if name in FP32_ENGINES:
            row["ok"] = row["max_abs_diff"] <= fp32_tol
            if not row["ok"]:
                row["reason"] = f"max difference {row['max_abs_diff']:.2g} > {fp32_tol:g} (fp32 engine)"
        else:
            row["ok"] = bool(row["ciede2000_mean"] <= max_de)
            if not row["ok"]:
                row["reason"] = f"mean CIEDE2000 {row['ciede2000_mean']:.3f} > {max_de:g} of fp32"
        if row["ok"]:
            passing[name] = normalizer.inference_engine
    one = images[:1]
    times: dict[str, list[float]] = {n: [] for n in passing}
    with torch.inference_mode():
        for fn in passing.values():  # warm-up (oneDNN primitive creation)
            normalizer.inference_engine = fn
            normalizer.transform(one)
        for _ in range(max(1, rounds)):
            for name, fn in passing.items():
                normalizer.inference_engine = fn
                t0 = time.perf_counter()
                normalizer.transform(one)
                times[name].append(time.perf_counter() - t0)
    for row in rows:
        if row["engine"] in times:
            row["latency_ms"] = float(np.median(times[row["engine"]]) * 1000.0)
    best = min(times, key=lambda n: np.median(times[n]))
    normalizer.inference_engine = passing[best]
    normalizer.engine_name = best
    return best, rows
