"""The typed run configuration: a ``models/run-all.toml`` profile plus ``--set`` overrides.

Two words, two things: a **run profile** (``--profile quick|paper``, the tables of
``models/run-all.toml``) is a set of run options; **speed** is the latency/throughput measurement
of each method (``speed_*`` options, ``speed-<method>`` stages). The option names
``profile_batch_sizes``, ``profile_repeats`` and ``profile_seconds`` of older command lines are
accepted as aliases of ``speed_batch_sizes``, ``speed_repeats`` and ``speed_seconds``.

Every option is typed and range-checked (:mod:`cellbench.options`) when the configuration is
built, so a bad option stops ``run-all`` before any data is read or any network trained.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..options import MAX_IMAGE_SIDE, check_choice, check_float, check_int, parse_bool, parse_set_items
from ..presets import models_dir, preset_names

__all__ = ["RunConfig", "load_run_config", "parse_set_items", "MIN_SIZE", "MAX_SIZE", "ALIASES", "STREAM_AUTO_MB",
           "STREAM_CHOICES"]

#: Smallest image side of a run: SSIM's 11-tap window and the classifier's pooling need at least this.
MIN_SIZE = 16
#: Largest image side (:data:`cellbench.options.MAX_IMAGE_SIDE`, the bound of every command).
MAX_SIZE = MAX_IMAGE_SIDE
#: Old option names still accepted on the command line and in profiles.
#: ``stream="auto"`` streams a folder dataset when its images decoded as float32 at the run's size
#: would take more than this many MB (the issue's memory bound: 4 GB for the whole run).
STREAM_AUTO_MB = 4096.0
#: Choices of the ``stream`` option.
STREAM_CHOICES = ("auto", "on", "off")
ALIASES = {"profile_batch_sizes": "speed_batch_sizes", "profile_repeats": "speed_repeats",
           "profile_seconds": "speed_seconds"}


@dataclass(frozen=True)
class RunConfig:
    """Options of one benchmark run (see ``models/run-all.toml`` for their meaning)."""

    profile: str
    synthetic_n: int
    size: int
    method_preset: str
    classifier_preset: str
    samples_per_class: int
    realism: bool
    speed_batch_sizes: tuple[int, ...]
    speed_repeats: int
    speed_seconds: float
    cross_limit_per_class: int = 0
    resim_limit_per_class: int = 0
    #: Test pairs of the embedded simulated data (0: 10 % of ``synthetic_n``, as the other splits).
    synthetic_test_n: int = 0
    #: Distilled rows run by default (``KIND:TEACHER``, e.g. ``lut3d:pcnet``); ``--methods`` replaces them too.
    distilled: tuple[str, ...] = ()
    #: Read folder datasets on demand through a bounded pipeline (:mod:`cellbench.data.stream`):
    #: ``"on"``, ``"off"`` or ``"auto"`` (stream when the decoded images would not fit
    #: :data:`STREAM_AUTO_MB`). Streaming changes no result (the same pixels, the same batches).
    stream: str = "auto"
    #: Decoded-image cache of a streamed run, in MB (``uint8``; 40 % for each training set).
    stream_cache_mb: float = 512.0
    #: CPU inference engines the speed stage tries for ccGAN/pcNet; the fastest within the quality bound
    #: is profiled and named (issue #17; :func:`cellbench.eval.profiling.choose_engine`).
    speed_engines: tuple[str, ...] = ("eager", "channels_last", "subpixel", "bf16", "bf16_subpixel")
    #: CPU engine of ccGAN/pcNet for the run's own transforms (evaluations, distillation teachers): an
    #: fp32 engine (:data:`cellbench.nets.engines.FP32_ENGINES`, within 1e-3 of eager), so every quality
    #: figure stays the fp32 network's; ``channels_last`` (batch norm folded, NHWC) is 1.3-1.4x eager.
    eval_engine: str = "eager"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["speed_batch_sizes"] = list(self.speed_batch_sizes)
        d["distilled"] = list(self.distilled)
        d["speed_engines"] = list(self.speed_engines)
        return d

    def method_preset_for(self, method: str) -> str | None:
        """The preset a method is built with: ``method_preset`` when it has one, else its defaults."""
        return self.method_preset if self.method_preset in preset_names(method) else None


def _profiles() -> dict[str, Any]:
    path = models_dir() / "run-all.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read run profiles ({exc})") from None


def _batch_sizes(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{name}={value!r}: must be a non-empty list of positive integers, e.g. [1, 4]")
    return tuple(check_int(v, name, min=1, max=4096) for v in value)


def _distilled(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or any(":" not in str(v) for v in value):
        raise ConfigError(f"distilled={value!r}: must be a list of KIND:TEACHER names, e.g. [\"lut3d:pcnet\"]")
    return tuple(str(v).strip() for v in value)


def _engines(value: Any) -> tuple[str, ...]:
    """``speed_engines``: names of :data:`cellbench.nets.engines.ENGINES` (a list or a comma-separated string)."""
    from ..nets.engines import ENGINES

    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"speed_engines={value!r}: must be a non-empty list of engines, e.g. [\"eager\", \"bf16\"]")
    return tuple(check_choice(str(v).strip(), "speed_engines", list(ENGINES)) for v in value)


def _eval_engine(value: Any) -> str:
    """``eval_engine``: one of the fp32 engines (a reduced-precision engine would change the quality figures)."""
    from ..nets.engines import FP32_ENGINES

    return check_choice(str(value).strip(), "eval_engine", [e for e in FP32_ENGINES if e != "onnxruntime"])


def _stream(value: Any) -> str:
    """``stream``: auto/on/off (booleans and their spellings too: true = on, false = off)."""
    text = str(value).strip().lower()
    if text in STREAM_CHOICES:
        return text
    try:
        return "on" if parse_bool(value, "stream") else "off"
    except ConfigError:
        raise ConfigError(f"stream={value!r}: must be one of auto, on, off") from None


def _preset(value: Any, name: str, choices: list[str]) -> str:
    return check_choice(value, name, choices) if choices else str(value)


def load_run_config(profile: str = "quick", overrides: Mapping[str, Any] | None = None, *,
                    methods: Iterable[str] = ()) -> RunConfig:
    """The ``[profile]`` table of ``models/run-all.toml`` with ``overrides``, typed and range-checked.

    ``method_preset`` must be a preset of ``models/<method>.toml`` (and of every method in
    ``methods`` that has presets); ``size`` at least the input multiple of every network the
    ``methods`` (registry keys) build.
    """
    table = _profiles()
    if profile not in table:
        raise ConfigError(f"{models_dir() / 'run-all.toml'}: no profile {profile!r}; "
                          f"available: {', '.join(sorted(table))}")
    raw = {ALIASES.get(k, k): v for k, v in table[profile].items()}
    said = {ALIASES.get(k, k): k for k in table[profile]}  # errors name the option as the user wrote it
    known = [f.name for f in dataclasses.fields(RunConfig) if f.name != "profile"]
    for key, value in (overrides or {}).items():
        name = ALIASES.get(key, key)
        if name not in known:
            check_choice(key, "--set option", known)  # "did you mean"
        raw[name], said[name] = value, key
    missing = [k for k in ("synthetic_n", "size", "method_preset", "classifier_preset", "samples_per_class",
                           "realism", "speed_batch_sizes", "speed_repeats", "speed_seconds") if k not in raw]
    if missing:
        raise ConfigError(f"run profile {profile!r}: missing option(s) {', '.join(missing)}")
    methods = list(methods)
    cfg = RunConfig(
        profile=profile,
        synthetic_n=check_int(raw["synthetic_n"], "synthetic_n", min=1, max=1_000_000),
        size=check_int(raw["size"], "size", min=MIN_SIZE, max=MAX_SIZE),
        method_preset=_preset(raw["method_preset"], "method_preset", _all_method_presets()),
        classifier_preset=_preset(raw["classifier_preset"], "classifier_preset", preset_names("classifier")),
        samples_per_class=check_int(raw["samples_per_class"], "samples_per_class", min=1, max=1000),
        realism=parse_bool(raw["realism"], "realism"),
        speed_batch_sizes=_batch_sizes(raw["speed_batch_sizes"], said.get("speed_batch_sizes", "speed_batch_sizes")),
        speed_repeats=check_int(raw["speed_repeats"], said.get("speed_repeats", "speed_repeats"), min=1, max=10_000),
        speed_seconds=check_float(raw["speed_seconds"], said.get("speed_seconds", "speed_seconds"), min=0.0,
                                  min_exclusive=True, max=86_400.0),
        cross_limit_per_class=check_int(raw.get("cross_limit_per_class", 0), "cross_limit_per_class", min=0),
        resim_limit_per_class=check_int(raw.get("resim_limit_per_class", 0), "resim_limit_per_class", min=0),
        synthetic_test_n=check_int(raw.get("synthetic_test_n", 0), "synthetic_test_n", min=0, max=1_000_000),
        distilled=_distilled(raw.get("distilled", [])),
        stream=_stream(raw.get("stream", "auto")),
        stream_cache_mb=check_float(raw.get("stream_cache_mb", 512.0), "stream_cache_mb", min=0.0, max=1_048_576.0),
        speed_engines=_engines(raw.get("speed_engines", list(RunConfig.speed_engines))),
        eval_engine=_eval_engine(raw.get("eval_engine", "eager")),
    )
    for m in methods:
        names = preset_names(m)
        if names and cfg.method_preset not in names:
            raise ConfigError(f"method_preset={cfg.method_preset!r}: {models_dir() / (m + '.toml')} has no such "
                              f"preset (available: {', '.join(names)})")
    _check_size(cfg, methods)
    return cfg


def _all_method_presets() -> list[str]:
    names = {p.stem for p in models_dir().glob("*.toml")} - {"run-all", "classifier"}
    return sorted({p for m in names for p in preset_names(m)})


@functools.lru_cache(maxsize=64)
def _input_multiple(name: str, preset: str | None, values: str) -> int:
    """Smallest image side every network of ``name`` (built from its preset) accepts."""
    from ..methods import create_normalizer

    nets = create_normalizer(name, preset).networks()
    return max([MIN_SIZE, *(int(getattr(net, "multiple", 1)) for net in nets.values())])


def _check_size(cfg: RunConfig, methods: list[str]) -> None:
    """``size`` must be at least the input multiple (``2 ** levels``) of each selected network."""
    from ..methods import NORMALIZERS
    from ..presets import load_preset

    for name in methods:
        if not NORMALIZERS.get(name).trainable:
            continue
        preset = cfg.method_preset_for(name)
        need = _input_multiple(name, preset, json.dumps(load_preset(name, preset), sort_keys=True, default=str))
        if cfg.size < need:
            raise ConfigError(f"size={cfg.size}: {name}'s networks need images of at least {need} pixels a side; "
                              f"use --set size={need} or larger")
