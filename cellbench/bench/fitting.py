"""The trained parts of a run: the WBC classifier stage and one ``fit-<method>`` stage per method.

A method is a registry key (``hm``, ``pcnet``) or ``KIND:TEACHER`` (e.g. ``lut3d:pcnet``): the
student ``KIND`` distilled from the fitted ``TEACHER`` by
:func:`cellbench.methods.distill.distill`; its fit key includes the teacher's fit key.
A fit key holds the data key, the preset's values (editing ``models/<method>.toml`` refits), the
seed and the options that change the result; never a path (a perceptual method trained on the
classifier's features depends on the classifier stage's *key*, not on where it lies).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from ..methods import NORMALIZERS, Normalizer, create_normalizer, load_normalizer
from ..presets import load_preset
from .cache import Stage, StageCache, stage_scope
from .config import RunConfig
from .track import Track

log = logging.getLogger(__name__)

__all__ = ["Fits", "split_method", "stage_name"]


def split_method(name: str) -> tuple[str, str | None]:
    """``"lut3d:pcnet"`` -> ``("lut3d", "pcnet")``; ``"hm"`` -> ``("hm", None)``."""
    kind, _, teacher = name.partition(":")
    return kind, (teacher or None)


def stage_name(name: str) -> str:
    """A method's name as used in stage folder names (``lut3d:pcnet`` -> ``lut3d-from-pcnet``)."""
    kind, teacher = split_method(name)
    return kind if teacher is None else f"{kind}-from-{teacher}"


def check_method(name: str) -> str:
    """Validate a method name (registered kind, registered non-distilled teacher)."""
    kind, teacher = split_method(name)
    NORMALIZERS.get(kind)
    if teacher is not None:
        if ":" in teacher:
            raise ConfigError(f"method {name!r}: a teacher cannot itself be distilled; use KIND:TEACHER")
        NORMALIZERS.get(teacher)
    return name


class Fits:
    """Classifier and method fits of one run, each a cached stage."""

    def __init__(self, cache: StageCache, track: Track, cfg: RunConfig, *, device: str = "cpu", seed: int = 0,
                 progress: bool = True) -> None:
        self.cache, self.track, self.cfg = cache, track, cfg
        self.device, self.seed, self.progress = device, seed, progress
        self._clf = None

    # -- the classifier -------------------------------------------------------------------------------
    def classifier_stage(self) -> Stage:
        from ..train.classifier import classifier_config

        # the preset's values, not only its name: editing models/classifier.toml retrains
        return self.cache.stage("classifier", {"data": self.track.classifier_key(), "seed": self.seed,
                                               "preset": self.cfg.classifier_preset,
                                               "settings": classifier_config(self.cfg.classifier_preset)})

    def classifier(self):
        from ..nets.classifier import load_classifier
        from ..train.classifier import train_classifier

        if self._clf is None:
            st = self.classifier_stage()
            if not self.cache.ready(st):
                train, val = self.track.classifier_data()
                log.info("stage classifier: training on %d Y images", len(train))
                self.cache.begin(st)
                with stage_scope(st, "classifier", self.seed):
                    clf = train_classifier(train, val, preset=self.cfg.classifier_preset, seed=self.seed,
                                           work_dir=st.path("work"), progress=self.progress)
                st.write_dir("model", clf.save)
                self.cache.finish(st)
            self._clf = load_classifier(st.path("model"), device=self.device)
        return self._clf

    # -- methods --------------------------------------------------------------------------------------
    def method_params(self, name: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        """``(preset, options that enter the key, options that do not)`` of a method's constructor."""
        kind, _ = split_method(name)
        cls = NORMALIZERS.get(kind)
        keyed: dict[str, Any] = {}
        unkeyed: dict[str, Any] = {}
        if cls.uses_feature_net:
            from ..errors import MissingWeightsError
            from ..nets.features import resolve_vgg16_weights

            try:
                resolve_vgg16_weights()
                keyed["feature_net"] = "vgg16"
            except MissingWeightsError:
                keyed["feature_net"] = "classifier"
                unkeyed["classifier_dir"] = str(self.classifier_stage().path("model"))
        if cls.trainable:
            keyed["device"] = self.device
            if not self.progress:
                unkeyed["progress"] = False  # --quiet
        return self.cfg.method_preset_for(kind), keyed, unkeyed

    def feature_nets(self, methods: list[str]) -> dict[str, str]:
        """Which feature network each perceptual method used (the report shows it)."""
        nets = {m: self.method_params(m)[1].get("feature_net") for m in methods}
        return {m: net for m, net in nets.items() if net}

    def fit_stage(self, name: str) -> Stage:
        kind, teacher = split_method(name)
        preset, keyed, _ = self.method_params(name)
        cfg = {"data": self.track.data_key(), "method": kind, "preset": preset, "params": keyed, "seed": self.seed,
               "preset_values": load_preset(kind, preset)}
        if keyed.get("feature_net") == "classifier":
            cfg["classifier"] = self.classifier_stage().key
        if teacher is not None:
            cfg["teacher"] = self.fit_stage(teacher).key
            engine = self.engine_for(teacher)
            if engine is not None:
                cfg["teacher_engine"] = engine
        return self.cache.stage(f"fit-{stage_name(name)}", cfg)

    def engine_for(self, name: str) -> str | None:
        """The CPU inference engine the run's own transforms of ``name`` use (run-profile ``eval_engine``):
        set for the generator networks (ccgan, pcnet) on the CPU, None for every other method or eager."""
        kind, teacher = split_method(name)
        engine = self.cfg.eval_engine
        if teacher is not None or engine == "eager" or self.device != "cpu" or not NORMALIZERS.get(kind).trainable:
            return None
        return engine

    def fitted(self, name: str) -> Normalizer:
        st = self.fit_stage(name)
        if not self.cache.ready(st):
            data = self.track.train_data()
            n = len(data) if isinstance(data, PairedSet) else len(data.x) + len(data.y)
            self.cache.begin(st)
            log.info("stage fit-%s: fitting on %d training images", name, n)
            t0 = time.perf_counter()
            with stage_scope(st, "small_net", self.seed):  # a trainer applies its own policy (cellbench.train.loop)
                norm = self._fit(name, data, st)
            seconds = time.perf_counter() - t0
            st.write_dir("model", norm.save)
            st.write_json("fit.json", {"seconds": seconds, "preset": self.method_params(name)[0], "n": n})
            self.cache.finish(st)
        norm = load_normalizer(st.path("model")).to(self.device)
        engine = self.engine_for(name)
        if engine is not None:
            from ..nets.engines import with_engine

            with_engine(norm, engine)
        return norm

    def _fit(self, name: str, data: PairedSet | UnpairedSet, st: Stage) -> Normalizer:
        kind, teacher = split_method(name)
        preset, keyed, unkeyed = self.method_params(name)
        if teacher is not None:
            from ..methods.distill import distill

            options = {**load_preset(kind, preset), **keyed, **unkeyed}
            return distill(self.fitted(teacher), data, kind, seed=self.seed, **options)
        if keyed.get("feature_net") == "classifier":
            self.classifier()
        norm = create_normalizer(kind, preset, **keyed, **unkeyed)
        norm.bind_run_dir(st.path("work"), resume=True)
        return norm.fit(data, seed=self.seed)

    def fit_threads(self, name: str) -> int:
        """Intra-op threads a method's fit runs with (for scheduling parallel stages): a trainable
        method's trainer policy for its preset's crop (:func:`cellbench.threads.threads_for_crop`), 1 otherwise."""
        from ..threads import thread_policy, threads_for_crop

        kind, teacher = split_method(name)
        if teacher is not None or not NORMALIZERS.get(kind).trainable or self.device != "cpu":
            return thread_policy("small_net")
        values = load_preset(kind, self.method_params(name)[0])
        if values.get("threads"):
            return int(values["threads"])
        return threads_for_crop(int(values.get("crop_size", 256) or self.cfg.size))  # 0: whole images

    def fit_info(self, name: str) -> dict[str, Any] | None:
        """``fit.json`` of a fitted method: seconds, preset, n."""
        st = self.fit_stage(name)
        return st.load_json("fit.json") if self.cache.ready(st) else None
