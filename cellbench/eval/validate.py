"""Realism check of the simulator against a real labelled folder (``cellbench simulate validate``).

Two transfer tests with the benchmark's own WBC classifier (:mod:`cellbench.train.classifier`,
preset ``quick`` by default) and two distribution distances:

* **sim -> real**: a classifier trained on simulated Y images (the simulator's target system,
  ``dm96-like`` by default) classifies the real images. If the simulated cells look like real ones
  of their class, it transfers; a classifier that learned simulator artefacts does not.
* **real -> sim**: a classifier trained on the real folder's training split (early stopping on its
  validation split) classifies a fresh simulated test set. It passes when every simulated class
  shows the features a real cell of that class has.
* **FID / KID** (:func:`cellbench.eval.realism.fid`, :func:`~cellbench.eval.realism.kid`) between the
  simulated test images and the real test split, on the real-trained classifier's penultimate
  features; the same distances between the real validation and test splits are the floor (two
  samples of the same real distribution), reported beside them.

Targets (issue #14): sim -> real >= 0.60, real -> sim >= 0.85 on PBC (DM96).

Choices, and why
----------------
* Classes: the real folder's classes that the simulator draws (the eight PBC classes of
  :data:`cellbench.data.classes.CLASSES`); both classifiers know exactly these classes.
* Images: real images are centre-cropped to ``size`` (256 px by default; PBC's 360 x 363 images
  and the simulator share a scale of about 0.1 um/px) and simulated at ``size``; both are
  resized (antialiased bilinear) to the classifier's input size once, exactly as the classifier
  itself would, to keep memory low.
* sim -> real is scored on **all** real images of the shared classes by default
  (``real_eval="all"``): the simulated-trained classifier has seen none of them, so every real
  image is a test image (4,000 on the shared PBC folder: a 95 % interval of about +-1.5 points).
  ``real_eval="test"`` scores the real test split only (the same images as the real classifier's
  test figure).
* The simulated training set is ``n_per_class`` images per class with seed ``seed``, split 90/10
  (every tenth image of a class is validation, for early stopping). The simulated test set is
  ``n_test_per_class`` images per class with a different seed (:func:`sim_test_seed`), so no
  scene is shared with the training set.
* FID/KID use equal sample sizes: the first ``len(real test)`` simulated test images (the
  simulator cycles through the classes, so they stay class-balanced) against the real test split.

Cache
-----
The real-trained classifier does not depend on the simulator, so it is trained once and kept in
``work_dir`` (default ``cache_dir()/validate``, i.e. ``$CELLBENCH_CACHE`` or
``$XDG_CACHE_HOME/cellbench/validate``)::

    WORK/real-<key>/key.json      what the key is made of (real folder fingerprint, preset options, seed, size, classes)
    WORK/real-<key>/train/        train_classifier's work folder (checkpoints, train_log.jsonl, best/)
    WORK/real-<key>/result.json   written last: training sizes, epochs, time (its presence marks a finished entry)

The key is a hash of the real folder's content (each image's path relative to the folder, size,
modification time and split), the classifier options, the seed, the crop size and the classes;
never of the folder's path. A rerun after a simulator change loads ``best/`` (safetensors) and
retrains only the simulated side; an interrupted training resumes from its last epoch. The work
folder may not lie inside the real folder (the real data stays untouched).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from ..data.classes import CLASSES
from ..data.folders import LabelledFolder
from ..data.sets import LabelledSet
from ..data.splits import cache_dir
from ..errors import CheckpointError, ConfigError, DatasetError
from ..fs import FolderLock, atomic_write
from ..nets.classifier import WBCClassifier, load_classifier
from ..options import check_choice, check_int, check_seed
from ..train.classifier import classifier_config, evaluate_classifier, train_classifier
from .agreement import wilson_interval
from .realism import fid, kid

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "validate_simulator", "simulator_fingerprint", "sim_test_seed", "default_work_dir",
           "format_report"]

#: Issue #14's targets (accuracy in [0, 1]).
TARGETS: dict[str, float] = {"sim_to_real": 0.60, "real_to_sim": 0.85}
#: Version of the cache layout and key (bump when either changes meaning).
CACHE_FORMAT = "cellbench-validate-real-v2"  # v2: classifier SELECTION with the loss tie-break
REAL_EVAL = ("all", "test")
_CHUNK = 32  # simulated images per chunk (memory: 256 px float pairs are 1.5 MB each)


def default_work_dir() -> Path:
    """``cache_dir()/validate``: ``$CELLBENCH_CACHE/validate`` or ``$XDG_CACHE_HOME/cellbench/validate``."""
    return cache_dir() / "validate"


def sim_test_seed(seed: int) -> int:
    """Seed of the simulated test set: derived from ``seed`` (``SeedSequence([seed, 1])``), never
    equal to a training seed of the same run, and a different set for every ``seed``."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1, dtype=np.uint32)[0])


def simulator_fingerprint() -> dict[str, Any]:
    """What the simulator is: a hash of its source and data files, and the morphology version.

    The hash covers every ``.py``, ``.toml`` and ``.json`` file under ``cellbench/sim`` (content,
    not dates), so two runs with the same fingerprint used the same simulator. It is read once per
    process (the code this process imported): a file edited on disk while a run goes on does not
    give that run's later stages other keys (which made a run retrain its teachers).
    """
    return dict(_simulator_fingerprint())


@functools.lru_cache(maxsize=1)
def _simulator_fingerprint() -> dict[str, Any]:
    from .. import sim

    base = Path(sim.__file__).parent
    h = hashlib.sha256()
    for p in sorted(base.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".toml", ".json") and "__pycache__" not in p.parts:
            h.update(p.relative_to(base).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    out: dict[str, Any] = {"source_sha256": h.hexdigest()[:16], "cellbench": __version__}
    out["morphology_version"] = _morphology_version()
    return out


def _morphology_version() -> Any:
    try:
        from ..sim import morphology  # the measured-morphology parameters (issue #14), when present
    except ImportError:
        return None
    for name in ("MORPHOLOGY_VERSION", "VERSION", "PARAMS_VERSION"):
        if hasattr(morphology, name):
            return getattr(morphology, name)
    return None


# --------------------------------------------------------------------------- data


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize to ``size`` (what :meth:`WBCClassifier.prepare` does)."""
    if images.shape[-2:] == (size, size):
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _cat(parts: list[LabelledSet]) -> LabelledSet:
    return LabelledSet(torch.cat([p.images for p in parts]), [c for p in parts for c in p.labels],
                       [i for p in parts for i in p.ids])


def _load_real(folder: LabelledFolder, split: str, classes: Sequence[str], crop: int, input_size: int,
               limit_per_class: int | None) -> LabelledSet | None:
    """One split, class by class: centre crop ``crop``, resized to ``input_size`` (low memory).

    An unreadable image stops the run with an error naming the file (a realism figure on a silently
    reduced set would not be comparable). ``None`` when the split holds no image of ``classes``.
    """
    parts = []
    for cls in classes:
        if not folder.select(split, classes=[cls], limit_per_class=limit_per_class):
            continue
        s = folder.load(split, size=crop, classes=[cls], limit_per_class=limit_per_class, skip_unreadable=False)
        parts.append(LabelledSet(_resized(s.images, input_size), s.labels, s.ids))
    return _cat(parts) if parts else None


def _simulate_chunk(args: tuple) -> tuple[torch.Tensor, list[str], list[str]]:
    n, start, seed, size, system, classes, input_size = args
    from ..sim import simulate_pairs

    s = simulate_pairs(n, size=size, seed=seed, y_system=system, classes=classes, start=start)
    return _resized(s.y, input_size), list(s.labels), list(s.ids)


def simulate_y(n: int, *, seed: int, classes: Sequence[str], size: int, system: str, input_size: int,
               workers: int = 1, progress: bool = False) -> LabelledSet:
    """Simulated Y images ``0 .. n-1`` of :func:`cellbench.sim.simulate_pairs` (class ``i % k``),
    resized to ``input_size``; identical for any ``workers``."""
    from tqdm.auto import tqdm

    jobs = [(min(_CHUNK, n - s), s, seed, size, system, tuple(classes), input_size) for s in range(0, n, _CHUNK)]
    bar = tqdm(total=n, desc=f"simulate {system}", unit="image", disable=not progress)
    out = []
    try:
        if workers <= 1 or len(jobs) == 1:
            for job in jobs:
                out.append(_simulate_chunk(job))
                bar.update(job[0])
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                for job, res in zip(jobs, ex.map(_simulate_chunk, jobs), strict=True):
                    out.append(res)
                    bar.update(job[0])
    finally:
        bar.close()
    return LabelledSet(torch.cat([o[0] for o in out]), [c for o in out for c in o[1]], [i for o in out for i in o[2]])


def _sim_split(data: LabelledSet, n_classes: int) -> tuple[LabelledSet, LabelledSet]:
    """90/10 by position: image ``i`` is of class ``i % k`` and its ``(i // k)``-th of that class;
    every tenth image of each class goes to validation."""
    val = np.array([(i // n_classes) % 10 == 9 for i in range(len(data))])
    idx_tr, idx_va = np.flatnonzero(~val), np.flatnonzero(val)

    def take(ix: np.ndarray) -> LabelledSet:
        return LabelledSet(data.images[torch.from_numpy(ix)], [data.labels[i] for i in ix], [data.ids[i] for i in ix])

    return take(idx_tr), take(idx_va)


def real_fingerprint(folder: LabelledFolder) -> str:
    """A content key of a labelled folder's images: relative path, size, modification time and split.

    (The benchmark's ``bench.track.folder_fingerprint`` does the same for whole folders; it lives
    in a higher layer.) A copied folder (new times) gets a new key and retrains once.
    """
    h = hashlib.sha256(b"cellbench-labelled-items-v1\n")
    for it in folder.items:
        st = it.path.stat()
        rel = it.path.relative_to(folder.root).as_posix()
        h.update(f"{it.cls}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{it.split}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- results


def _scores(res: dict[str, Any]) -> dict[str, Any]:
    """An evaluation without per-image predictions, with a 95 % Wilson interval."""
    k = int(np.trace(np.asarray(res["confusion"])))
    lo, hi = wilson_interval(k, res["n"])
    out = {key: res[key] for key in ("accuracy", "n", "per_class", "per_class_n", "confusion", "classes")}
    out["correct"] = k
    out["ci95"] = [lo, hi]
    return out


def _distances(a: torch.Tensor, b: torch.Tensor, seed: int) -> dict[str, Any]:
    """FID and KID at equal sample size ``n``; KID over 100 subsets of ``min(1000, n // 2)`` rows, so
    that its standard deviation says how much the estimate moves (subsets of all ``n`` rows would
    all be the same set)."""
    n = min(len(a), len(b))
    fa, fb = a[:n].numpy(), b[:n].numpy()
    mean, std, s = kid(fa, fb, subset_size=max(2, min(1000, n // 2)), n_subsets=100, seed=seed)
    return {"fid": fid(fa, fb), "kid": {"mean": mean, "std": std, "subset_size": s}, "n": n}


def _real_classifier(folder: LabelledFolder, classes: list[str], *, preset: str, seed: int, size: int,
                     cfg: dict[str, Any], work: Path, limit_per_class: int | None, need_all: bool,
                     progress: bool, overrides: dict[str, Any]) -> tuple[WBCClassifier, dict, dict]:
    """The cached (or freshly trained) real classifier, its cache record, and the real sets loaded.

    Returns ``(classifier, record, sets)`` with ``sets`` holding ``test`` and ``val`` always and
    ``train`` when it was loaded (training, or ``need_all``).
    """
    key_doc = {"format": CACHE_FORMAT, "real": real_fingerprint(folder), "classes": classes, "seed": seed,
               "size": size, "limit_per_class": limit_per_class, "preset": preset,
               "config": {k: v for k, v in cfg.items() if k not in ("device", "threads", "eval_batch_size")}}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    entry = work / f"real-{key}"
    best, record_path = entry / "train" / "best", entry / "result.json"
    input_size = int(cfg["input_size"])

    def load(split: str) -> LabelledSet | None:
        log.info("loading the real %s split of %s", split, folder.root)
        return _load_real(folder, split, classes, size, input_size, limit_per_class)

    sets: dict[str, LabelledSet | None] = {"test": load("test"), "val": load("val")}
    for split in ("test", "val"):
        if sets[split] is None:
            raise DatasetError(f"{folder.root}: the {split} split holds no image of the classes {classes}; "
                               "the folder needs more images per class (80/10/10 split)")
    if (best / "classifier.json").is_file() and record_path.is_file():
        try:
            clf = load_classifier(best)
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (CheckpointError, OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{entry}: cached real classifier unreadable ({exc}); delete {entry} "
                                  "to retrain it") from None
        if clf.classes != classes:
            raise CheckpointError(f"{best}: cached classifier has classes {clf.classes}, expected {classes}; "
                                  f"delete {entry}")
        record = dict(record, reused=True, dir=str(entry))
        if need_all:
            sets["train"] = load("train")
        return clf, record, sets

    sets["train"] = load("train")
    if sets["train"] is None:
        raise DatasetError(f"{folder.root}: the train split holds no image of the classes {classes}; "
                           "the folder needs more images per class (80/10/10 split)")
    missing = sorted(set(classes) - set(sets["train"].labels))
    if missing:
        raise DatasetError(f"{folder.root}: no training image of class(es) {missing}; add images or remove "
                           "the class folder")
    with FolderLock(entry, what="real classifier cache"):
        atomic_write(entry / "key.json", json.dumps(key_doc, indent=1, sort_keys=True, default=str))
        w0, c0 = time.perf_counter(), time.process_time()
        clf = train_classifier(sets["train"], sets["val"], preset=preset, seed=seed, work_dir=entry / "train",
                               progress=progress, **overrides)
        train_wall, train_cpu = time.perf_counter() - w0, time.process_time() - c0
        record = {"key": key, "n_train": len(sets["train"]), "n_val": len(sets["val"]),
                  "best_epoch": clf.info.get("best_epoch"), "epochs_run": clf.info.get("epochs_run"),
                  "train_wall_s": train_wall, "train_cpu_s": train_cpu}
        atomic_write(record_path, json.dumps(record, indent=1))
    return clf, dict(record, reused=False, dir=str(entry)), sets


def validate_simulator(
    real: str | os.PathLike,
    *,
    n_per_class: int = 200,
    n_test_per_class: int = 100,
    system: str = "dm96-like",
    preset: str = "quick",
    seed: int = 0,
    size: int = 256,
    real_eval: str = "all",
    limit_per_class: int | None = None,
    work_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    workers: int = 1,
    sim_seeds: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Sim -> real and real -> sim transfer accuracy and FID/KID of the simulator against ``real``.

    Parameters
    ----------
    real:
        A labelled folder ``ROOT/<class>/<file>`` (e.g. PBC); its seeded 80/10/10 split (or its
        ``splits.csv``) gives the real classifier's train/val/test sets.
    n_per_class, n_test_per_class:
        Simulated training (split 90/10 into train/val) and test images per class.
    system:
        The simulated Y system (a built-in name or a ``.toml`` file).
    preset:
        Classifier preset of ``models/classifier.toml`` (``quick``; ``tiny`` for tests).
    seed:
        Seeds the real split, both classifiers and the simulated training set (the test set uses
        :func:`sim_test_seed`).
    size:
        Real centre crop and simulated image side in pixels (about 0.1 um/px).
    real_eval:
        ``"all"`` (every real image of the shared classes) or ``"test"`` (the real test split): the
        images sim -> real is scored on.
    limit_per_class:
        At most this many real images per class and split (quick looks; None = all).
    work_dir:
        The cache of real-trained classifiers (default :func:`default_work_dir`); not inside ``real``.
    threads:
        torch CPU threads for the whole check (restored afterwards); None leaves the setting.
    workers:
        Processes that render simulated images (the images do not depend on it).
    sim_seeds:
        Simulated-side classifiers to train on the same simulated images, with seeds ``seed .. seed +
        sim_seeds - 1``. One classifier's sim -> real moves by one to two points with its initialisation and
        batch order alone, and per class by 10 points or more, which is as much as many simulator changes; with
        more than one, ``sim_to_real_seeds`` / ``sim_to_sim_seeds`` hold every classifier's accuracy, their
        mean, sd and per-class means, and the sim -> real target is judged on the mean. ``sim_to_real`` and
        ``sim_to_sim`` stay the first classifier's full records.

    Returns
    -------
    dict
        ``sim_to_real``, ``real_to_sim``, ``sim_to_sim``, ``real_to_real`` (each ``accuracy``, ``n``,
        ``correct``, ``ci95``, ``per_class``, ``per_class_n``, ``confusion`` with rows true and
        columns predicted in ``classes`` order), ``fid``, ``kid`` (``mean``, ``std``,
        ``subset_size``), ``fid_n``, ``real_floor`` (the same distances between the real
        validation and test splits), ``targets``, ``passed``, ``classes``, ``settings``,
        ``simulator``, ``cache``, ``timing``; with ``sim_seeds`` > 1 also ``sim_to_real_seeds`` and
        ``sim_to_sim_seeds`` (``seeds``, ``accuracy``, ``mean``, ``sd``, ``per_class_mean``).

    References
    ----------
    Heusel et al. (2017), FID, eq. (6); Binkowski et al. (2018), KID; the classifier-transfer test
    follows the "train on synthetic, test on real" protocol (e.g. Ravuri & Vinyals 2019,
    Classification Accuracy Score).
    """
    t_start = time.perf_counter()
    n_per_class = check_int(n_per_class, "n_per_class", min=10, max=100_000)
    n_test_per_class = check_int(n_test_per_class, "n_test_per_class", min=1, max=100_000)
    seed = check_seed(seed, "seed")
    size = check_int(size, "size", min=32, max=4096)
    real_eval = check_choice(real_eval, "real_eval", REAL_EVAL)
    workers = check_int(workers, "workers", min=1, max=256)
    sim_seeds = check_int(sim_seeds, "sim_seeds", min=1, max=100)
    if limit_per_class is not None:
        limit_per_class = check_int(limit_per_class, "limit_per_class", min=1)
    if threads is not None:
        threads = check_int(threads, "threads", min=1, max=1024)
    root = Path(real)
    if not root.is_dir():
        raise DatasetError(f"{root}: real labelled folder not found; pass a folder ROOT/<class>/<file>")
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    if _inside(work, root):
        raise ConfigError(f"work folder {work} lies inside the real folder {root}; choose another (the real "
                          "data stays untouched)")
    from ..sim import load_system

    load_system(system)  # a bad name or file fails before any work
    simulator = simulator_fingerprint()  # now: the code this process imported, not later edits on disk
    cfg = classifier_config(preset)
    input_size = int(cfg["input_size"])
    overrides: dict[str, Any] = {"threads": threads} if threads else {}

    folder = LabelledFolder(root, seed=seed)
    classes = [c for c in CLASSES if c in folder.classes()]
    if not classes:
        raise DatasetError(f"{root}: no class in common with the simulator's classes ({', '.join(CLASSES)}); "
                           f"the folder has {', '.join(folder.classes()) or 'none'}")
    k = len(classes)

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        real_clf, record, real_sets = _real_classifier(
            folder, classes, preset=preset, seed=seed, size=size, cfg=cfg, work=work,
            limit_per_class=limit_per_class, need_all=real_eval == "all", progress=progress, overrides=overrides)
        t_real = time.perf_counter() - t0

        t0 = time.perf_counter()
        test_seed = sim_test_seed(seed)
        sim_all = simulate_y(n_per_class * k, seed=seed, classes=classes, size=size, system=system,
                             input_size=input_size, workers=workers, progress=progress)
        sim_test = simulate_y(n_test_per_class * k, seed=test_seed, classes=classes, size=size, system=system,
                              input_size=input_size, workers=workers, progress=progress)
        t_sim = time.perf_counter() - t0
        sim_train, sim_val = _sim_split(sim_all, k)
        del sim_all

        t0 = time.perf_counter()
        sim_clfs = [train_classifier(sim_train, sim_val, preset=preset, seed=seed + k, progress=progress, **overrides)
                    for k in range(sim_seeds)]
        sim_clf = sim_clfs[0]
        t_sim_train = time.perf_counter() - t0
        if sim_clf.classes != classes:  # n_per_class >= 10 puts every class in training
            raise DatasetError(f"simulated training set lacks classes {sorted(set(classes) - set(sim_clf.classes))}")

        t0 = time.perf_counter()
        real_eval_set = real_sets["test"] if real_eval == "test" else _cat(
            [s for s in (real_sets.get("train"), real_sets.get("val"), real_sets["test"]) if s is not None])
        s2r = [_scores(evaluate_classifier(c, real_eval_set)) for c in sim_clfs]
        s2s = [_scores(evaluate_classifier(c, sim_test)) for c in sim_clfs]
        sim_to_real, sim_to_sim = s2r[0], s2s[0]
        real_to_sim = _scores(evaluate_classifier(real_clf, sim_test))
        real_to_real = _scores(evaluate_classifier(real_clf, real_sets["test"]))
        feats_real_test = real_clf.embed(real_sets["test"].images)
        dist = _distances(real_clf.embed(sim_test.images), feats_real_test, seed)
        floor = _distances(real_clf.embed(real_sets["val"].images), feats_real_test, seed)
        t_eval = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)

    seeds_out = {}
    if sim_seeds > 1:
        seeds = list(range(seed, seed + sim_seeds))
        seeds_out = {"sim_to_real_seeds": _over_seeds(s2r, seeds), "sim_to_sim_seeds": _over_seeds(s2s, seeds)}
    passed = {"sim_to_real": _judged_sim_to_real({"sim_to_real": sim_to_real, **seeds_out}) >= TARGETS["sim_to_real"],
              "real_to_sim": real_to_sim["accuracy"] >= TARGETS["real_to_sim"]}
    passed["all"] = passed["sim_to_real"] and passed["real_to_sim"]
    return {
        "sim_to_real": sim_to_real,
        "real_to_sim": real_to_sim,
        "sim_to_sim": sim_to_sim,
        **seeds_out,
        "real_to_real": real_to_real,
        "fid": dist["fid"],
        "kid": dist["kid"],
        "fid_n": dist["n"],
        "real_floor": floor,
        "targets": dict(TARGETS),
        "passed": passed,
        "classes": classes,
        "settings": {"real": str(root), "real_eval": real_eval, "system": system, "preset": preset,
                     "input_size": input_size, "seed": seed, "sim_test_seed": test_seed, "size": size,
                     "n_per_class": n_per_class, "n_test_per_class": n_test_per_class,
                     "n_sim_train": len(sim_train), "n_sim_val": len(sim_val), "n_sim_test": len(sim_test),
                     "n_real_train": record.get("n_train"), "n_real_val": len(real_sets["val"]),
                     "n_real_test": len(real_sets["test"]), "limit_per_class": limit_per_class,
                     "threads": threads, "workers": workers, "sim_seeds": sim_seeds,
                     "sim_classifier": {"best_epoch": sim_clf.info.get("best_epoch"),
                                        "epochs_run": sim_clf.info.get("epochs_run"),
                                        "best_val_acc": sim_clf.info.get("best_val_acc")}},
        "simulator": simulator,
        "cache": {"dir": record["dir"], "key": record.get("key"), "reused": record["reused"],
                  "real_train_cpu_s": record.get("train_cpu_s")},
        "timing": {"real_s": t_real, "simulate_s": t_sim, "sim_train_s": t_sim_train, "evaluate_s": t_eval,
                   "total_s": time.perf_counter() - t_start},
    }


def _judged_sim_to_real(result: dict[str, Any]) -> float:
    """The sim -> real figure the target is judged on: the mean over the simulated-side classifiers when
    there are several (``sim_to_real_seeds``), else the one classifier's accuracy."""
    many = result.get("sim_to_real_seeds")
    return many["mean"] if many else result["sim_to_real"]["accuracy"]


def _over_seeds(scores: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Accuracies of classifiers of several seeds on one test set: each, their mean and sd, per-class means."""
    acc = np.array([s["accuracy"] for s in scores], np.float64)
    per_class = {c: (None if any(s["per_class"][c] is None for s in scores)
                     else float(np.mean([s["per_class"][c] for s in scores]))) for c in scores[0]["per_class"]}
    return {"seeds": seeds, "accuracy": acc.tolist(), "mean": float(acc.mean()),
            "sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "per_class_mean": per_class}


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- text


def _confusion_lines(res: dict[str, Any]) -> list[str]:
    classes = res["classes"]
    short = [c[:5] for c in classes]
    lines = ["    true \\ predicted " + " ".join(f"{s:>5}" for s in short)]
    for c, row in zip(classes, res["confusion"], strict=True):
        lines.append(f"    {c:<19}" + " ".join(f"{v:5d}" for v in row))
    return lines


def format_report(result: dict[str, Any]) -> str:
    """The human-readable report of :func:`validate_simulator` (what the CLI prints without --json)."""
    s = result["settings"]
    out = [f"realism check: simulated {s['system']} vs {s['real']} ({len(result['classes'])} classes; "
           f"classifier {s['preset']}, input {s['input_size']} px, crop {s['size']} px, seed {s['seed']})"]
    titles = {"sim_to_real": f"sim -> real (trained on {s['n_sim_train']} simulated, tested on "
                             f"{result['sim_to_real']['n']} real images, {s['real_eval']})",
              "real_to_sim": f"real -> sim (trained on {s['n_real_train']} real, tested on "
                             f"{result['real_to_sim']['n']} simulated images)"}
    for name, title in titles.items():
        r = result[name]
        target = result["targets"][name]
        verdict = "PASS" if result["passed"][name] else "FAIL"
        out.append("")
        out.append(f"{title}: accuracy {r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]  "
                   f"target >= {target:.2f}  {verdict}")
        out.append("  per class: " + ", ".join(
            f"{c} {('-' if r['per_class'][c] is None else format(r['per_class'][c], '.2f'))} (n={r['per_class_n'][c]})"
            for c in r["classes"]))
        out.append("  confusion (rows true, columns predicted):")
        out.extend(_confusion_lines(r))
        many = result.get(f"{name}_seeds")
        if many:
            out.append(f"  {len(many['seeds'])} classifiers (seeds {many['seeds'][0]}-{many['seeds'][-1]}): "
                       + ", ".join(f"{a:.3f}" for a in many["accuracy"])
                       + f"; mean {many['mean']:.3f} (sd {many['sd']:.3f}), the figure the target is judged on")
            out.append("  per class, mean: " + ", ".join(
                f"{c} {'-' if v is None else format(v, '.2f')}" for c, v in many["per_class_mean"].items()))
    out.append("")
    out.append(f"references: real -> real {result['real_to_real']['accuracy']:.3f} (n={result['real_to_real']['n']}), "
               f"sim -> sim {result['sim_to_sim']['accuracy']:.3f} (n={result['sim_to_sim']['n']})")
    kd, fl = result["kid"], result["real_floor"]
    out.append(f"FID {result['fid']:.2f}, KID {kd['mean']:.4f} +- {kd['std']:.4f} (simulated vs real test, "
               f"n={result['fid_n']} each, real-trained classifier features); real val vs real test: "
               f"FID {fl['fid']:.2f}, KID {fl['kid']['mean']:.4f} +- {fl['kid']['std']:.4f} (n={fl['n']})")
    c = result["cache"]
    out.append(f"real classifier: {'reused from' if c['reused'] else 'trained and cached in'} {c['dir']}")
    out.append(f"simulator {result['simulator']['source_sha256']} (morphology "
               f"{result['simulator']['morphology_version']}); {result['timing']['total_s']:.0f} s")
    verdict = "PASS" if result["passed"]["all"] else "FAIL"
    out.append(f"{verdict}: sim -> real {_judged_sim_to_real(result):.3f} (>= {TARGETS['sim_to_real']:.2f}), "
               f"real -> sim {result['real_to_sim']['accuracy']:.3f} (>= {TARGETS['real_to_sim']:.2f})")
    return "\n".join(out)
