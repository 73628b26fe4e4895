"""Peak memory while writing many simulated pairs: it must stay flat (streamed, nothing kept).

Writes ``--n`` pairs with ``write_paired_dataset`` in a child thread of this process and samples
the resident set size (RSS, from /proc/self/status, including the worker processes) every
``--every`` pairs; prints RSS after the first pairs, the peak, and the final value, and the
throughput.

    .venv/bin/python benchmarks/sim_memory.py --n 10000 --workers 2 --out /tmp/sim10k
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    args = ap.parse_args()
    from cellbench.sim import write_paired_dataset

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
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
