"""One CPU thread policy: how many cores this process may use, and how many threads each kind of work gets.

Why a policy (issue #16): torch's default is one intra-op thread per physical core. The quick
networks are small (3 narrow levels on 32x32 crops); with 2 intra-op threads on 2 cores every
oneDNN convolution ends in an OpenMP barrier, and whenever another process holds one of the
cores, the barrier waits for the descheduled thread: a 300-iteration quick ccGAN training went
from 13.9 s alone to 131.6 s beside a one-core burner and a second training (9.5x). With one
intra-op thread there is no barrier to wait in. ``benchmarks/neighbours.py`` measures it; the
figures that chose the defaults below are in ``docs/speed.md``.

The policy (:func:`thread_policy`), by kind of work:

* ``small_net``   training and inference of the quick networks (crops below
                  :data:`LARGE_CROP`): 1 thread.
* ``large_net``   networks on large inputs (the paper presets' 256x256 crops): every usable core
                  (each convolution is big enough to pay for its barriers).
* ``classifier``  the WBC classifier's training and features: 1 thread (small network, 64x64
                  inputs after pooling).
* ``eval``        the evaluation stages (metrics, classifier predictions): 1 thread.
* ``speed``       the speed measurement: every usable core (what a user running ``transform``
                  alone gets); measured with nothing else of the run running.
* ``data``        data preparation (simulator, decoding): 1 thread.

``CELLBENCH_THREADS=N`` in the environment replaces every kind's count by ``N`` (measurements, or a
machine where the defaults do not fit).

A kind's thread count depends only on the kind and on the usable cores, **never** on how many
worker processes run beside it (``--jobs``): floating-point reductions may round differently with
another thread count, so a result must not depend on the parallelism of the run that made it.

Inter-op threads are set to 1 (:func:`configure_process`): cellbench never runs independent
operators of one graph in parallel; parallel work is in worker processes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

__all__ = ["usable_cores", "cpu_bf16_native", "die_with_parent", "init_worker", "thread_policy", "threads_for_crop",
           "limit_threads", "configure_process", "worker_environment", "KINDS", "LARGE_CROP", "OVERRIDE_ENV", "Kind"]

Kind = Literal["small_net", "large_net", "classifier", "eval", "speed", "data"]
#: The kinds of :func:`thread_policy`.
KINDS: tuple[str, ...] = ("small_net", "large_net", "classifier", "eval", "speed", "data")
#: A training crop (or inference image) side from which a network counts as large: a 128x128 crop
#: through a U-Net's full-resolution layers is large enough for several threads to pay off.
LARGE_CROP = 128
#: Environment variable that replaces every kind's thread count.
OVERRIDE_ENV = "CELLBENCH_THREADS"
#: The environment variables of the threading libraries below torch (OpenMP, MKL, OpenBLAS).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by a cgroup CPU quota under ``root`` (v2 ``cpu.max`` or v1 ``cpu.cfs_*``), None if unlimited."""
    with contextlib.suppress(OSError, ValueError):
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    with contextlib.suppress(OSError, ValueError):
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    return None


def usable_cores(*, affinity: set[int] | None = None, cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup CPU quota when there is one.

    ``affinity`` (a set of CPU ids) and ``cgroup_root`` replace what is read from the system (tests).
    A fractional quota is rounded down, at least 1 (1.5 CPUs of quota cannot run 2 threads at full speed).
    """
    if affinity is None:
        try:
            affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            affinity = set(range(os.cpu_count() or 1))
    cores = max(1, len(affinity))
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


def cpu_bf16_native(*, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX-BF16 units) and torch's oneDNN can use them.

    On such a CPU, bf16 autocast roughly halves the time of small convolutions (the quick
    generators train 1.6x faster per step, ``docs/speed.md``); without the units oneDNN emulates
    bf16 and autocast is slower than fp32, so callers fall back to fp32.
    """
    try:
        import torch

        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def thread_policy(kind: str, *, cores: int | None = None) -> int:
    """Intra-op threads for ``kind`` of work (see the module docstring) on ``cores`` usable cores.

    The result never depends on how many processes run in parallel (see the module docstring).
    """
    if kind not in KINDS:
        from .errors import ConfigError

        raise ConfigError(f"thread policy: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    forced = os.environ.get(OVERRIDE_ENV, "").strip()
    if forced:
        from .options import check_int

        return check_int(forced, OVERRIDE_ENV, min=1, max=4096)
    n = usable_cores() if cores is None else max(1, int(cores))
    if kind in ("large_net", "speed"):
        return n
    return 1


def threads_for_crop(crop: int, *, cores: int | None = None) -> int:
    """The policy for a network trained (or run) on ``crop`` x ``crop`` inputs: small below :data:`LARGE_CROP`."""
    return thread_policy("large_net" if int(crop) >= LARGE_CROP else "small_net", cores=cores)


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[int]:
    """Run a block with ``threads`` torch intra-op threads (OpenMP's count follows); restored afterwards.

    ``None`` leaves the count as it is. Yields the count in force.
    """
    import torch

    old = torch.get_num_threads()
    if threads is None:
        yield old
        return
    n = max(1, int(threads))
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def configure_process(intra: int | None = None) -> None:
    """Set the process-wide part of the policy: 1 inter-op thread (once; torch refuses a second
    setting after parallel work started, which is then left as it is) and optionally ``intra``."""
    import torch

    with contextlib.suppress(RuntimeError):
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    if intra is not None:
        torch.set_num_threads(max(1, int(intra)))


def die_with_parent() -> None:
    """Ask Linux to send this (worker) process SIGTERM when its parent exits (``PR_SET_PDEATHSIG``).

    A ``run-all`` killed with ``kill PID`` (not Ctrl-C, which signals the whole process group) would
    otherwise leave its spawned stage workers training and writing on their own. A no-op elsewhere.
    """
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the request was in place
        os._exit(1)


def init_worker(intra: int | None = None) -> None:
    """Initializer of cellbench's worker processes: :func:`die_with_parent` and :func:`configure_process`."""
    die_with_parent()
    configure_process(intra)


def worker_environment(threads: int = 1) -> dict[str, str]:
    """Environment of a worker process (set before torch loads): ``threads`` OpenMP/MKL/OpenBLAS threads."""
    return {name: str(int(threads)) for name in THREAD_ENV}
