"""The benchmark (``run-all``, ``compare``): one run loop over a track's cached stages.

Rooms:

* :mod:`.config`    :class:`RunConfig`, a typed run profile (``models/run-all.toml`` + ``--set``)
* :mod:`.cache`     :class:`StageCache`: key -> ``RUN_DIR/stages/<name>-<hash>/``, atomic, checked
* :mod:`.track`     the :class:`Track` protocol; :mod:`.paired` and :mod:`.cross` implement it
* :mod:`.fitting`   the classifier and method fit stages (and distilled ``KIND:TEACHER`` methods)
* :mod:`.runner`    :class:`Benchmark`: the run loop, results, fingerprints, ``compare``
* :mod:`.artifacts` confusion matrices, the sample grid and training curves
* :mod:`.store`     how datasets, outputs and records are stored in stages

Typical use (what ``cellbench run-all`` does)::

    bench = open_benchmark("reports/run", profile="quick", data="synthetic", methods=["hm", "affine"])
    bench.run()
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..data.spec import parse_data_spec
from ..errors import ConfigError
from ..options import check_seed, resolve_device
from .cache import Stage, StageCache
from .config import RunConfig, load_run_config
from .runner import Benchmark
from .track import Track

__all__ = ["Benchmark", "RunConfig", "Stage", "StageCache", "Track", "load_run_config", "open_benchmark",
           "check_compare_methods"]


def open_benchmark(run_dir: str | os.PathLike, *, profile: str = "quick", data: str = "synthetic",
                   methods: Sequence[str] | None = None, device: str = "cpu", seed: int = 0,
                   overrides: dict[str, Any] | None = None, progress: bool = True, x_test: str | None = None,
                   scale: str | None = None) -> Benchmark:
    """A :class:`Benchmark` with every option checked (nothing is read, trained or written yet).

    ``methods=None`` runs every registered normalizer the track accepts (except the distillation
    students, which run as the profile's ``distilled`` rows ``KIND:TEACHER``); an empty list is an error.
    """
    from ..methods import NORMALIZERS
    from ..methods.distill import DISTILL_KINDS
    from .cross import CrossTrack
    from .fitting import check_method, split_method
    from .paired import PairedTrack

    if methods is not None and not list(methods):
        raise ConfigError("--methods: empty list; name at least one method (see `cellbench methods`)")
    seed = check_seed(seed)
    device = resolve_device(device)
    spec = parse_data_spec(data)
    chosen = [check_method(m) for m in methods] if methods else None
    standalone = [n for n in NORMALIZERS.names() if n not in DISTILL_KINDS]
    bases = sorted({part for m in (chosen or standalone) for part in split_method(m) if part})
    cfg = load_run_config(profile, overrides, methods=bases)
    if (x_test is not None or scale not in (None, "none")) and spec.kind != "cross":
        raise ConfigError("--x-test and --scale belong to the cross track (--data cross:x=DIR,y=DIR)")
    cache = StageCache(run_dir)
    if spec.kind == "cross":
        track: Track = CrossTrack(spec, cfg, cache, seed=seed, x_test=x_test, scale=scale)
    else:
        track = PairedTrack(spec, cfg, cache, seed=seed, progress=progress)
    # the cross track picks the unpaired ones
    default = [*standalone, *(check_method(m) for m in cfg.distilled)] if spec.kind != "cross" else []
    return Benchmark(run_dir, track, cfg, methods=chosen or default, device=device, seed=seed, progress=progress,
                     cache=cache)


def check_compare_methods(methods: Sequence[str]) -> list[str]:
    """``compare``'s methods: at least two distinct, known names (checked before anything is written)."""
    from .fitting import check_method

    chosen = list(dict.fromkeys(methods))
    if len(chosen) < 2:
        raise ConfigError(f"compare needs at least two methods, got {', '.join(chosen) or 'none'}")
    return [check_method(m) for m in chosen]
