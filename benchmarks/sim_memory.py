"""Peak memory while writing many simulated pairs: it must stay flat (streamed, nothing kept).

Writes ``--n`` pairs with ``write_paired_dataset`` in a child thread of this process and samples
the resident set size (RSS, from /proc/self/status, including the worker processes) every
2 seconds; prints the throughput, RSS in the first and last 10 % of the samples and the peak, and
a last line in the README's form (``flat`` when the last 10 % stay within 25 % of the first 10 %;
exit status 1 otherwise). ``--out`` defaults to a temporary folder, removed afterwards unless
``--keep``.

    .venv/bin/python benchmarks/sim_memory.py --n 2000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def tree_rss_mib() -> float:
    me = os.getpid()
    total = rss_mib(me)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                total += rss_mib(int(d))
    return total


#: The last 10 % of the samples may exceed the first 10 % by this fraction and still count as flat.
FLAT_TOLERANCE = 0.25


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    args = ap.parse_args(argv)
    from cellbench.sim import write_paired_dataset

    tmp = None
    if args.out is None:
        tmp = Path(tempfile.mkdtemp(prefix="cellbench-sim-memory-"))
        args.out = tmp / "sim"

    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), tree_rss_mib()))
            time.sleep(2.0)

    t0 = time.time()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    write_paired_dataset(args.out, args.n, workers=args.workers, progress=True)
    done.set()
    th.join()
    dt = time.time() - t0
    rss = [r for _, r in samples]
    k = max(1, len(rss) // 10)
    print(f"pairs: {args.n}, workers: {args.workers}, time: {dt:.0f} s, {args.n / dt:.1f} pairs/s")
    print(
        f"RSS (process tree) first 10% of samples max: {max(rss[:k]):.0f} MiB, "
        f"last 10% max: {max(rss[-k:]):.0f} MiB, peak: {max(rss):.0f} MiB, samples: {len(rss)}"
    )
    if not args.keep:
        shutil.rmtree(tmp or args.out, ignore_errors=True)
    elif tmp is not None:
        print(f"kept the pairs in {args.out}")
    first, last = max(rss[:k]), max(rss[-k:])
    flat = last <= (1 + FLAT_TOLERANCE) * first
    gb = 2**20 / 1e9
    print(f"memory while writing: {'flat' if flat else 'NOT flat'}: {first * gb:.2f} GB first 10 %, "
          f"{last * gb:.2f} GB last 10 % of {args.n:,} pairs (peak {max(rss) * gb:.2f} GB)")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
