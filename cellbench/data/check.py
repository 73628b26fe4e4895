"""``cellbench data check``: validate a dataset of either layout in one pass, reporting every problem."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageReadError
from ..io import read_image, read_mask
from .folders import Problem, index_labelled, index_paired, is_paired_root
from .masks import MAX_LABEL


@dataclass
class CheckReport:
    """What ``check_dataset`` found: problems, counts per class and split, image sizes."""

    root: str
    layout: str  # "paired" or "labelled"
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # class -> split -> n
    sizes: Counter = field(default_factory=Counter)  # (h, w) -> n
    files_decoded: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def problem_counts(self) -> Counter:
        return Counter((p.severity, p.kind) for p in self.problems)


def _decode(job: tuple[str, Path]) -> tuple[str, Path, tuple[int, int] | None, str | None]:
    kind, path = job
    try:
        if kind == "mask":
            m = read_mask(path)
            if int(m.max(initial=0)) > MAX_LABEL:
                msg = f"{path}: mask label {int(m.max())} > {MAX_LABEL} (see README 'Data formats')"
                return kind, path, m.shape[:2], msg
            return kind, path, m.shape[:2], None
        return kind, path, read_image(path).shape[:2], None
    except ImageReadError as exc:
        return kind, path, None, str(exc)


def check_dataset(root: str | os.PathLike, *, workers: int = 2, seed: int = 0,
                  progress: bool = False) -> CheckReport:
    """Decode every image of a paired or labelled dataset and collect every problem.

    Never raises for bad data inside the folder; only a missing folder raises ``DatasetError``.
    The split file is not written (checking is read-only).
    """
    t0 = time.perf_counter()
    root = Path(root)
    paired = is_paired_root(root)
    report = CheckReport(str(root), "paired" if paired else "labelled")
    jobs: list[tuple[str, Path]] = []
    if paired:
        items, problems = index_paired(root, seed=seed, write_split=False)
        for it in items:
            report.counts[it.cls][it.split] += 1
            jobs += [("x", it.x), ("y", it.y)] + ([("mask", it.mask)] if it.mask else [])
        if (root / "masks").is_dir():
            missing = [it for it in items if it.mask is None]
            if missing and len(missing) < len(items):
                problems.append(Problem(str(root / "masks"), "mask_missing",
                                        f"{len(missing)} pair(s) have no mask (e.g. {missing[0].cls}/{missing[0].id})",
                                        "warning"))
    else:
        litems, problems = index_labelled(root, seed=seed, write_split=False)
        for it in litems:
            report.counts[it.cls][it.split] += 1
        jobs = [("image", it.path) for it in litems]
    report.problems.extend(problems)
    # the second of two files with one id (a.png, a.jpg) is not indexed, but it is decoded too, so
    # everything that is wrong with either file is reported at once
    jobs += [("image", Path(p.path)) for p in problems if p.kind == "duplicate_id"]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="checking", unit="img")
    shapes: dict[Path, tuple[int, int]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for kind, path, shape, err in ex.map(_decode, jobs, chunksize=32):
            report.files_decoded += 1
            if bar:
                bar.update()
            if err:
                report.problems.append(Problem(str(path), "unreadable" if kind != "mask" or shape is None
                                               else "bad_mask", err))
                continue
            shapes[path] = shape
            if kind != "mask":
                report.sizes[shape] += 1
    if bar:
        bar.close()

    if paired:
        for it in items:
            sx, sy = shapes.get(it.x), shapes.get(it.y)
            if sx and sy and sx != sy:
                report.problems.append(Problem(str(it.x), "pair_size", f"{it.x}: X is {sx[1]}x{sx[0]} but Y is "
                                               f"{sy[1]}x{sy[0]} (both are centre-cropped; check registration)",
                                               "warning"))
            sm = shapes.get(it.mask) if it.mask else None
            if sm and sy and sm != sy:
                report.problems.append(Problem(str(it.mask), "mask_size", f"{it.mask}: mask is {sm[1]}x{sm[0]} "
                                               f"but its Y image is {sy[1]}x{sy[0]}; re-export the mask"))
    if report.sizes:
        common = report.sizes.most_common(1)[0][0]
        odd = {s: n for s, n in report.sizes.items() if s != common}
        if odd:
            desc = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sorted(odd.items()))
            report.problems.append(Problem(str(root), "odd_size", f"{sum(odd.values())} image(s) differ from the "
                                           f"common size {common[1]}x{common[0]}: {desc}; they are centre-cropped "
                                           "or padded to the configured size", "warning"))
    report.seconds = time.perf_counter() - t0
    return report
