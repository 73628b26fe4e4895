"""``run-all`` and ``compare``: one run loop over a track's stages, for every track.

Stages (each cached under ``RUN_DIR/stages/<name>-<hash>/``, see :mod:`cellbench.bench.cache`;
an interrupted run resumes where it stopped, trained methods inside their stage from their last
checkpoint):

1. the track's data stages (``data``/``resim``/``test-masks`` or ``cross-data``)
2. ``classifier``        the WBC classifier trained on Y train (early stopping on Y val)
3. ``test-predictions``  the classifier's predictions on the real test targets; ``test-features``
                         its penultimate features of them (FID, KID)
4. ``fit-<m>``           each normalizer fitted (or trained, or distilled) on the track's training data
5. ``eval-<m>``          test outputs, predictions and the track's records of each method and reference
                         (a streamed track, ``track.eval_cap`` set: in chunks of :data:`EVAL_CHUNK`
                         test images, outputs kept as uint8; :meth:`Benchmark._evaluate_streamed`)
6. ``speed-<m>``         latency / throughput / memory on this host
7. results               ``results.json``, ``results.csv``, ``config.json``, ``artifacts/``; the CLI builds the report

The whole run holds :class:`cellbench.fs.FolderLock` on the run folder. The layout of the run
folder is documented in ``docs/run-folder.md``.

**Threads and parallel stages** (``docs/speed.md``). Every stage runs under the thread policy of
its kind (:mod:`cellbench.threads`: one intra-op thread for the quick networks, the classifier and
the evaluations, every usable core for large networks and for the speed measurement), with the
global random generators seeded from the run's seed and the stage's key, so a stage's result
depends on neither the order of the stages nor the process that runs it. With ``jobs > 1`` the
independent stages (the classifier, the fits, the evaluations) first run in up to ``jobs`` worker
processes (``spawn``; a stage of ``t`` threads takes ``t`` of the ``jobs`` slots), each writing its
stage through the :class:`~cellbench.bench.cache.StageCache`; the run loop then reads them. The
results are bit-identical to ``jobs=1``. The speed stages always run last, one at a time in the
main process, with no worker running. ``redo_speed`` re-measures the speed stages and reuses
every other stage.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CellbenchError
from ..fs import FolderLock, atomic_write
from ..results import Record, check_fingerprints, fingerprint_differences, load_results, run_metadata, save_results
from ..tensors import as_float01
from ..threads import configure_process, init_worker, limit_threads, thread_policy, usable_cores
from .artifacts import write_artifacts
from .cache import Stage, StageCache, config_hash, host_info, source_version, stage_scope
from .config import RunConfig
from .fitting import Fits, check_method, split_method, stage_name
from .store import (
    load_array,
    load_records,
    load_tensors,
    load_tensors_mapped,
    save_array,
    save_records,
    save_tensors,
    to_uint8,
)
from .track import Evaluation, Track

log = logging.getLogger(__name__)

__all__ = ["Benchmark", "EVAL_MODULES", "StageTask"]

#: An evaluation's records depend on these modules' code: their source hash is the eval stages' version.
EVAL_MODULES = ("cellbench.eval.evaluate", "cellbench.eval.image", "cellbench.eval.colour", "cellbench.eval.agreement",
                "cellbench.eval.realism", "cellbench.eval.metrics", "cellbench.segmentation", "cellbench.bench.track",
                "cellbench.bench.paired", "cellbench.bench.cross")
SPEED_MODULES = ("cellbench.eval.profiling", "cellbench.eval.evaluate", "cellbench.eval.metrics")
#: A streamed evaluation transforms and classifies the test inputs this many images at a time (a multiple
#: of the transform's batch of 16 and the classifier's of 64: the same batches as one whole pass).
EVAL_CHUNK = 256


class Benchmark:
    """One benchmark run of ``methods`` on ``track`` in ``run_dir`` (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, track: Track, cfg: RunConfig, *, methods: list[str],
                 device: str = "cpu", seed: int = 0, progress: bool = True, cache: StageCache | None = None,
                 jobs: int | None = None, redo_speed: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.configure(jobs=jobs, redo_speed=redo_speed)
        self._speed_redone: set[str] = set()
        self.run_name = self.run_dir.resolve().name or "run"
        self.track, self.cfg, self.seed, self.device, self.progress = track, cfg, seed, device, progress
        #: the track's private (cache) attributes as given, before any data is loaded: what a worker's copy starts from
        self._track_blank = _private_state(track)
        self.realism = cfg.realism
        self.methods = track.check_methods([check_method(m) for m in methods])
        self.cache = cache if cache is not None else StageCache(self.run_dir)
        self.fits = Fits(self.cache, track, cfg, device=device, seed=seed, progress=progress)
        self._refs: dict[str, np.ndarray] | None = None
        self._feats: np.ndarray | None = None

    def configure(self, *, jobs: int | None = None, redo_speed: bool = False) -> Benchmark:
        """Set how the run runs (not what it computes): ``jobs`` worker processes for the independent
        stages (None: the usable cores, :func:`cellbench.threads.usable_cores`); ``redo_speed``:
        re-measure the speed stages, reuse every other. Returns the benchmark."""
        from ..options import check_int

        #: worker processes for independent stages (see the module docstring)
        self.jobs = usable_cores() if jobs is None else check_int(jobs, "--jobs", min=1, max=1024)
        #: re-measure the speed stages (every other stage is reused)
        self.redo_speed = bool(redo_speed)
        return self

    # -- shared test-set stages -----------------------------------------------------------------------
    def classifier(self):
        return self.fits.classifier()

    def _test_stage(self, name: str) -> Stage:
        return self.cache.stage(name, {"classifier": self.fits.classifier_stage().key, "data": self.track.data_key()})

    def reference_predictions(self) -> dict[str, np.ndarray]:
        """Classifier predictions on the track's real test targets (``"y"``, and ``"y2"`` when rendered twice)."""
        if self._refs is None:
            st = self._test_stage("test-predictions")
            images = self.track.reference_images()
            if not self.cache.ready(st):
                clf = self.classifier()
                self.cache.begin(st)
                with stage_scope(st, "eval", self.seed):
                    for key, imgs in images.items():
                        save_array(st, f"{key}.npy", _predict(clf, imgs))
                self.cache.finish(st)
            self._refs = {key: load_array(st, f"{key}.npy") for key in images}
        return self._refs

    def reference_features(self) -> np.ndarray:
        """The classifier's penultimate features of the real test targets (FID, KID)."""
        if self._feats is None:
            st = self._test_stage("test-features")
            if not self.cache.ready(st):
                with stage_scope(st, "eval", self.seed):
                    feats = _features(self.classifier(), self.track.reference_images()["y"])
                self.cache.begin(st)
                save_tensors(st, "features.safetensors", {"features": feats})
                self.cache.finish(st)
            self._feats = load_tensors(st, "features.safetensors")["features"].numpy()
        return self._feats

    def prepare_references(self) -> None:
        """Every shared test-set stage the evaluations read: predictions, features (with realism), and the
        paired track's test masks. Done before any evaluation, so none computes them inside its own stage."""
        self.prepare_masks()
        self.reference_predictions()
        if self.realism:
            self.reference_features()

    def prepare_masks(self) -> None:
        """The paired track's test masks (a stage of the track), under the evaluation's thread policy."""
        masks = getattr(self.track, "test_masks", None)
        if callable(masks):
            with stage_scope("test-masks", "eval", self.seed):
                masks()

    # -- evaluation and speed -------------------------------------------------------------------------
    def eval_stage(self, name: str) -> Stage:
        """The stage of a method's evaluation (or a reference's: one of ``track.reference_names()``)."""
        reference = name in self.track.reference_names()
        fit = None if reference else self.fits.fit_stage(name).key
        cfg = {"fit": fit, "classifier": self.fits.classifier_stage().key, "data": self.track.data_key(),
               "track": self.track.kind, "realism": self.realism, "version": source_version(*EVAL_MODULES)}
        engine = None if reference else self.fits.engine_for(name)
        if engine is not None:
            cfg["engine"] = engine
        return self.cache.stage(f"eval-{stage_name(name)}", cfg)

    def transform_all(self, norm, x: torch.Tensor, batch_size: int = 16, *, as_uint8: bool = False) -> torch.Tensor:
        """``norm.transform`` over ``x`` (float, or uint8 test images converted a batch at a time) in
        batches, on the CPU: float32, or with ``as_uint8`` each batch rounded to the 8-bit image it is
        saved as (a quarter of the memory)."""
        with torch.inference_mode():
            outs = []
            for i in range(0, len(x), batch_size):
                out = norm.transform(as_float01(x[i:i + batch_size]).to(self.device)).float().cpu()
                outs.append(to_uint8(out) if as_uint8 else out)
            return torch.cat(outs)

    def evaluate(self, name: str) -> Evaluation | None:
        """A method's (or reference's) evaluation, from its stage or computed now."""
        st = self.eval_stage(name)
        if not self.cache.ready(st):
            refs = self.track.reference_names()
            with stage_scope(st, "eval", self.seed):
                ev = self.track.evaluate_reference(self, name) if name in refs else self._evaluate_method(name)
            if ev is None:
                return None
            self.cache.begin(st)
            save_tensors(st, "outputs.safetensors", {"outputs": ev.outputs})
            save_array(st, "pred.npy", ev.pred)
            save_array(st, "success.npy", ev.success)
            save_records(st, "records.json", ev.records)
            self.cache.finish(st, fingerprint=self.fingerprint())
        return Evaluation(load_records(st, "records.json"), load_tensors_mapped(st, "outputs.safetensors")["outputs"],
                          load_array(st, "pred.npy"), load_array(st, "success.npy"))

    def _evaluate_method(self, name: str) -> Evaluation:
        from ..eval.evaluate import class_probabilities, fit_records, passthrough_records

        norm = self.fits.fitted(name)
        x = self.track.test_inputs()
        log.info("stage eval-%s: transforming %d test images", name, len(x))
        if getattr(self.track, "eval_cap", None) is not None:
            return self._evaluate_streamed(name, norm, x)
        # every evaluation measures the 8-bit images a method's outputs are saved as (the stage's
        # outputs.safetensors): the figures follow from the stored outputs, in a quarter of the memory
        outputs = self.transform_all(norm, x, as_uint8=True)
        # one classifier pass: the class probabilities, and the predictions as their argmax (softmax keeps
        # the order of the logits, so this equals classifier.predict)
        clf = self.classifier()
        proba = class_probabilities(clf, outputs)
        pred = proba.argmax(1) if proba is not None else clf.predict(outputs).cpu().numpy()
        records, success = self.track.evaluate(self, name, outputs, pred, proba=proba)
        fit = self.fits.fit_info(name) or {}
        records += fit_records(self.run_name, name, fit.get("seconds", float("nan")), n=int(fit.get("n", 0)))
        records += passthrough_records(self.run_name, name, norm.passthrough_count, n=len(x))
        return Evaluation(records, outputs, pred, np.asarray(success, dtype=bool))

    def _evaluate_streamed(self, name: str, norm, x) -> Evaluation:
        """:meth:`_evaluate_method` in bounded memory (a streamed track, ``track.eval_cap`` set).

        The test inputs are read, transformed and classified :data:`EVAL_CHUNK` images at a time
        (the same transform and classifier batches as one whole pass: the same values); the outputs
        are the ``uint8`` images the stage stores, and the image-level metrics use the seeded subset of
        ``eval_cap`` test images (every image when there are fewer: then the track evaluates exactly
        what the in-memory path gives it).
        """
        from ..eval.evaluate import class_probabilities, fit_records, passthrough_records
        from .cross import eval_subset

        n = len(x)
        keep = eval_subset(n, self.track.eval_cap, self.seed)
        clf = self.classifier()
        u8 = torch.empty((n, *tuple(x.shape[1:])), dtype=torch.uint8)
        probas: list[np.ndarray] = []
        preds: list[np.ndarray] = []
        kept: list[torch.Tensor] = []
        start = 0
        for xb in _chunks(x, EVAL_CHUNK):
            out = self.transform_all(norm, xb, as_uint8=True)
            proba = class_probabilities(clf, out)
            if proba is not None:
                probas.append(proba)
            preds.append(proba.argmax(1) if proba is not None else clf.predict(out).cpu().numpy())
            u8[start:start + len(out)] = out
            sel = keep[(keep >= start) & (keep < start + len(out))] - start
            kept.append(out[torch.as_tensor(sel, dtype=torch.long)] if len(sel) < len(out) else out)
            start += len(out)
            del out
        outputs = torch.cat(kept) if kept else torch.zeros((0, *tuple(x.shape[1:])), dtype=torch.uint8)
        pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
        proba_all = np.concatenate(probas) if len(probas) == len(preds) and probas else None
        index = None if len(keep) == n else keep
        records, success = self.track.evaluate(self, name, outputs, pred, proba=proba_all, index=index)
        fit = self.fits.fit_info(name) or {}
        records += fit_records(self.run_name, name, fit.get("seconds", float("nan")), n=int(fit.get("n", 0)))
        records += passthrough_records(self.run_name, name, norm.passthrough_count, n=n)
        return Evaluation(records, u8, pred, np.asarray(success, dtype=bool))

    def speed_stage(self, name: str) -> Stage:
        """The speed stage of a method on this host (timings of another machine are never reused)."""
        return self.cache.stage(f"speed-{stage_name(name)}", {
            "fit": self.fits.fit_stage(name).key, "size": self.cfg.size, "batch_sizes": self.cfg.speed_batch_sizes,
            "repeats": self.cfg.speed_repeats, "seconds": self.cfg.speed_seconds,
            "engines": list(self.speed_engines()),
            "host": host_info(self.device, threads=self.speed_threads()),
            "version": source_version(*SPEED_MODULES)})

    def speed_threads(self) -> int:
        """Intra-op threads of the speed measurement (the thread policy's ``speed``: every usable core)."""
        return thread_policy("speed")

    def speed_engines(self) -> tuple[str, ...]:
        """The CPU inference engines the speed stage tries for ccGAN/pcNet (run-profile ``speed_engines``)."""
        return tuple(self.cfg.speed_engines)

    def _choose_engine(self, norm) -> tuple[str, list[dict]]:
        """The fastest engine of ``norm`` within the quality bound on 16 test inputs (issue #17;
        :func:`cellbench.eval.profiling.choose_engine`), switched on; ``("eager", [])`` for methods
        without networks, on CUDA, or when only eager is configured."""
        from ..eval.profiling import choose_engine

        engines = self.speed_engines()
        if torch.device(self.device).type != "cpu" or getattr(norm, "G_xy", None) is None or set(engines) <= {"eager"}:
            return "eager", []
        x = as_float01(self.track.test_inputs()[:16]).float()
        masks_of = getattr(self.track, "test_masks", None)
        masks = masks_of() if masks_of is not None else None
        with limit_threads(self.speed_threads()):
            return choose_engine(norm, x, candidates=engines, masks=None if masks is None else masks[:16],
                                 threads=self.speed_threads())

    def speed(self, name: str) -> list[Record]:
        """A method's speed records (measured now when the stage is not done, or with ``redo_speed``).

        Every record carries the conditions of its measurement in ``extra``
        (:func:`cellbench.eval.profiling.speed_conditions`: rounds, spread, CPU time against wall
        time, threads, the load average before and after, and whether it was disturbed and why).
        """
        from ..eval.evaluate import speed_records
        from ..eval.profiling import profile_normalizer, speed_conditions

        st = self.speed_stage(name)
        redo = self.redo_speed and name not in self._speed_redone
        if redo or not self.cache.ready(st):
            norm = self.fits.fitted(name)
            self.cache.begin(st)
            with stage_scope(st, "speed", self.seed):
                engine, engine_rows = self._choose_engine(norm)
                prof = profile_normalizer(norm, size=self.cfg.size, device=self.device,
                                          batch_sizes=self.cfg.speed_batch_sizes, repeats=self.cfg.speed_repeats,
                                          max_seconds=self.cfg.speed_seconds, threads=self.speed_threads())
            records = []
            for r in speed_records(self.run_name, name, prof, split="speed"):
                batch = int(r.extra.get("batch_size") or 1) if r.metric == "throughput_ips" else 1
                extra = {**r.extra, **speed_conditions(prof, batch_size=batch)}
                if engine_rows:
                    extra.update(engine=engine, engines=engine_rows)
                records.append(dataclasses.replace(r, extra=extra))
            save_records(st, "records.json", records)
            self.cache.finish(st)
            self._speed_redone.add(name)
        return load_records(st, "records.json")

    # -- parallel stages ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """The track's data stages and test masks, in this process: every other stage reads them."""
        self.track.classifier_data()
        self.track.train_data()
        self.track.test_inputs()
        self.track.reference_images()
        self.prepare_masks()

    def stage_tasks(self) -> list[StageTask]:
        """The classifier, reference, fit and evaluation stages not done yet, in priority order, with
        their dependencies (among these tasks) and the intra-op threads each runs with."""
        tasks: list[StageTask] = []
        ids: set[str] = set()

        def add(task: StageTask) -> None:
            tasks.append(dataclasses.replace(task, deps=tuple(d for d in task.deps if d in ids)))
            ids.add(task.id)

        if not self.cache.ready(self.fits.classifier_stage()):
            add(StageTask("classifier", threads=thread_policy("classifier")))
        fits: list[str] = []
        for m in self.methods:
            _, teacher = split_method(m)
            fits += [teacher, m] if teacher else [m]
        fits = list(dict.fromkeys(fits))
        # the longest first: trained methods, then the others; a student after its teacher
        fits.sort(key=lambda m: (not self.fits.fit_threads(m) > 1, split_method(m)[1] is not None,
                                 not self._trainable(m)))
        for m in fits:
            if self.cache.ready(self.fits.fit_stage(m)):
                continue
            _, teacher = split_method(m)
            deps = ["classifier"] if "classifier" in self.fits.fit_stage(m).config else []
            deps += [f"fit:{teacher}"] if teacher else []
            add(StageTask("fit", m, threads=self.fits.fit_threads(m), deps=tuple(deps)))
        refs_ready = self.cache.ready(self._test_stage("test-predictions")) and (
            not self.realism or self.cache.ready(self._test_stage("test-features")))
        if not refs_ready:
            add(StageTask("references", threads=thread_policy("eval"), deps=("classifier",)))
        for m in [*self.methods, *self.track.reference_names()]:
            if self.cache.ready(self.eval_stage(m)):
                continue
            deps = ("references", "classifier") + ((f"fit:{m}",) if m in self.methods else ())
            add(StageTask("eval", m, threads=thread_policy("eval"), deps=deps))
        return tasks

    def _trainable(self, name: str) -> bool:
        from ..methods import NORMALIZERS

        return bool(NORMALIZERS.get(split_method(name)[0]).trainable)

    def run_task(self, task: StageTask) -> None:
        """Do one stage task in this process (a worker's job; :meth:`run_parallel`)."""
        if task.kind == "classifier":
            self.classifier()
        elif task.kind == "references":
            self.prepare_references()
        elif task.kind == "fit":
            self.fits.fitted(task.method)
        elif task.kind == "eval":
            self.evaluate(task.method)
        else:
            raise CellbenchError(f"unknown stage task {task.kind!r}")

    def run_parallel(self) -> list[str]:
        """Run :meth:`stage_tasks` in up to ``jobs`` spawned worker processes; returns the task ids done.

        A task starts when its dependencies are done and its threads fit in the free slots (strict
        priority order: a waiting large task is not overtaken). A failed task stops the scheduling;
        the tasks running finish (their stages are kept) and the error is raised.
        """
        self.prepare_data()
        tasks = self.stage_tasks()
        if not tasks:
            return []
        _reset_private_state(self.track, self._track_blank)  # workers load what they need; this process reloads later
        recipe = {"run_dir": self.run_dir, "track": _detached(self.track, self._track_blank), "cfg": self.cfg,
                  "methods": self.methods,
                  "device": self.device, "seed": self.seed, "progress": False, "cache": self.cache, "jobs": 1}
        log.info("running %d stages in %d worker processes: %s", len(tasks), self.jobs,
                 ", ".join(t.id for t in tasks))
        done: set[str] = set()
        pending = list(tasks)
        running: dict[Future, StageTask] = {}
        free = self.jobs
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=init_worker) as pool:
            while pending or running:
                for t in list(pending):
                    need = min(t.threads, self.jobs)
                    if not all(d in done for d in t.deps):
                        continue
                    if need > free:
                        break  # strict priority: wait for slots
                    running[pool.submit(_run_task, recipe, t)] = t
                    pending.remove(t)
                    free -= need
                if not running:
                    raise CellbenchError(f"stage tasks with unmet dependencies: {', '.join(t.id for t in pending)}")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    t = running.pop(f)
                    free += min(t.threads, self.jobs)
                    exc = f.exception()
                    if exc is not None:
                        pending.clear()
                        for other in running:
                            other.cancel()
                        raise exc
                    done.add(t.id)
                    log.info("stage task %s done", t.id)
        return [t.id for t in tasks]

    # -- the whole run --------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What every stored row must share: the data and splits, and the classifier."""
        return {"data": {**self.track.describe(), "hash": config_hash(self.track.data_key())},
                "classifier": {"preset": self.cfg.classifier_preset, "hash": self.fits.classifier_stage().key}}

    def check_results_compatible(self) -> list[Record]:
        """Stored records (for ``compare``), refused when computed on other data or another classifier."""
        path = self.run_dir / "results.json"
        if not path.exists():
            return []
        old, meta = load_results(path)
        check_fingerprints(meta, path)
        fps = meta.get("fingerprints") or {}
        mine = self.fingerprint()
        stale = [m for m, fp in fps.items() if fingerprint_differences(fp, mine)]
        if stale:
            diff = fingerprint_differences(fps[stale[0]], mine)
            raise CellbenchError(f"{path}: rows for {', '.join(stale)} were computed on another test set or "
                                 f"classifier ({'; '.join(diff)}); re-run run-all (or compare into another --run)")
        return old

    def run(self, *, comparison: bool = False, finish: Callable[[Path, list[str], str], Path] | None = None) -> Path:
        """Run every stage under the run folder's lock; returns ``results.json`` (or what ``finish`` returns).

        ``finish(run_dir, methods, title)`` is called with the results written, still under the lock: the
        CLI passes the report builder (the report is a layer above the benchmark).
        """
        configure_process()  # one inter-op thread (cellbench.threads)
        with FolderLock(self.run_dir, what="run folder"):
            return self._run(comparison=comparison, finish=finish)

    def _run(self, *, comparison: bool, finish: Callable[[Path, list[str], str], Path] | None) -> Path:
        from ..eval.evaluate import classifier_records, mcnemar_records
        from ..eval.metrics import METRICS

        t0 = time.perf_counter()
        kept = self.check_results_compatible() if comparison else []
        if self.jobs > 1:
            self.run_parallel()
        bar = _bar(len(self.methods) + 3, self.progress)
        clf = self.classifier()
        refs = self.reference_predictions()
        self.prepare_references()
        records = classifier_records(self.run_name, refs["y"], self.track.reference_labels(), clf.classes)
        bar.update()
        evals: dict[str, Evaluation] = {}
        for m in self.methods:
            bar.set_postfix_str(m)
            evals[m] = self.evaluate(m)
            records += evals[m].records
            bar.update()
        references = {name: self.evaluate(name) for name in self.track.reference_names()}
        for ev in references.values():
            records += ev.records if ev is not None else []
        records += self.track.summary_records(self, evals)
        records += mcnemar_records(self.run_name, {m: ev.success for m, ev in evals.items()},
                                   basis=self.track.mcnemar_basis)
        for m in self.methods:
            bar.set_postfix_str(f"speed {m}")
            records += self.speed(m)
        bar.update()
        methods = self.methods
        if comparison:
            compared = set(self.methods)
            kept = [r for r in kept if not r.reference and (
                not compared >= {r.method, r.extra.get("vs", r.method)} if r.metric == "mcnemar_p"
                else r.method not in compared)]
            others = [m for m in dict.fromkeys(r.method for r in kept) if self._cached_eval(m)]
            methods = others + self.methods
            records = kept + records
        write_artifacts(self.run_dir, self.track, methods, self._artifact_evals(methods, evals), clf.classes,
                        refs["y"], self._curves(methods), per_class=self.cfg.samples_per_class)
        config = {**self.cfg.as_dict(), **self.track.metadata(), "methods": self.methods, "device": self.device,
                  "seed": self.seed, "feature_net": self.fits.feature_nets(self.methods)}
        meta = run_metadata(config)
        meta["seconds"] = time.perf_counter() - t0
        fp = self.fingerprint()
        meta["fingerprint"] = fp
        meta["fingerprints"] = {m: fp for m in dict.fromkeys(r.method for r in records)}
        save_results(self.run_dir, records, meta, metrics=METRICS)
        atomic_write(self.run_dir / "config.json", _json(config))
        out = self.run_dir / "results.json"
        if finish is not None:
            out = finish(self.run_dir, list(self.methods), self.track.title)
        bar.update()
        bar.close()
        return out

    def _cached_eval(self, method: str) -> bool:
        """Whether a stored method (of an earlier run-all) has its evaluation cached under this configuration."""
        try:
            return self.cache.ready(self.eval_stage(method))
        except CellbenchError:  # no longer registered
            return False

    def _artifact_evals(self, methods: list[str], evals: dict[str, Evaluation]) -> dict[str, Evaluation]:
        out = dict(evals)
        for m in methods:
            if m not in out:
                st = self.eval_stage(m)
                out[m] = Evaluation([], load_tensors_mapped(st, "outputs.safetensors")["outputs"],
                                    load_array(st, "pred.npy"), load_array(st, "success.npy"))
        return out

    def _curves(self, methods: list[str]) -> dict[str, Path]:
        logs = {m: self.fits.fit_stage(m).path("work") / "train_log.jsonl" for m in methods}
        logs["classifier"] = self.fits.classifier_stage().path("work") / "train_log.jsonl"
        return {m: p for m, p in logs.items() if p.is_file()}


@dataclass(frozen=True)
class StageTask:
    """A unit of :meth:`Benchmark.run_parallel`: ``kind`` (``classifier``, ``references``, ``fit``,
    ``eval``) of ``method``, the intra-op ``threads`` it runs with, the task ids it waits for."""

    kind: str
    method: str = ""
    threads: int = 1
    deps: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.method}" if self.method else self.kind


def _batches(images, batch_size: int):
    """Images ``batch_size`` at a time, in order: a streamed set (:class:`cellbench.data.stream.LazyImages`)
    through its decoding pipeline, a tensor by slicing."""
    if hasattr(images, "batches"):
        yield from images.batches(batch_size)
    else:
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]


def _chunks(images, size: int, batch_size: int = 64):
    """:func:`_batches` of ``batch_size`` regrouped into float tensors of exactly ``size`` images (the last
    shorter), so the batches cut from each chunk are those of one whole pass."""
    if not hasattr(images, "batches"):
        yield from _batches(images, size)
        return
    part: list[torch.Tensor] = []
    count = 0
    for b in _batches(images, batch_size):
        part.append(b)
        count += len(b)
        while count >= size:
            buf = torch.cat(part)
            yield buf[:size]
            part, count = ([buf[size:]] if count > size else []), count - size
    if part:
        yield torch.cat(part)


def _predict(clf, images) -> np.ndarray:
    """``clf.predict`` (batches of 64) of a tensor or a streamed set (the same batches: the same values)."""
    if not hasattr(images, "batches"):
        return clf.predict(images).cpu().numpy()
    out = [clf.predict(b).cpu().numpy() for b in _batches(images, 64)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _features(clf, images, cap: int = 256) -> torch.Tensor:
    """The classifier's penultimate features of ``images`` (float32, CPU): one pass over a tensor or a
    streamed set of at most ``cap`` images (what the in-memory run computes; the cross track's ``EVAL_CAP``),
    else batches of 64."""
    if not hasattr(images, "batches"):
        return clf.features(images).float().cpu()
    if len(images) <= cap:
        with torch.inference_mode():
            return clf.features(images[:]).float().cpu()
    return torch.cat([clf.embed(b) for b in _batches(images, 64)])


def _run_task(recipe: dict[str, Any], task: StageTask) -> str:
    """A worker process's job: rebuild the run from ``recipe`` and do ``task`` (its stage is written there)."""
    Benchmark(**recipe).run_task(task)
    return task.id


def _private_state(track: Track) -> dict[str, Any]:
    """A copy of a track's private attributes (its in-memory caches, e.g. loaded splits)."""
    return {k: copy.deepcopy(v) for k, v in vars(track).items() if k.startswith("_")}


def _reset_private_state(track: Track, state: dict[str, Any]) -> None:
    """Put a track's private attributes back to ``state`` (copies): it reloads from its stages when asked."""
    for k, v in state.items():
        setattr(track, k, copy.deepcopy(v))


def _detached(track: Track, state: dict[str, Any]) -> Track:
    """A copy of ``track`` with its private attributes as in ``state``, cheap to send to a worker process."""
    out = copy.copy(track)
    _reset_private_state(out, state)
    return out


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, default=str)


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="run-all", unit="stage")
