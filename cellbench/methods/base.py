"""The :class:`Normalizer` interface and the normalizer registry.

A normalizer maps source-system images (X) to the target system's appearance (Y). It never
reads image files: it receives tensors (:mod:`cellbench.data.sets`) and saves/loads its own
state in a model folder::

    MODEL_DIR/normalizer.json      {"method": ..., "params": {...}, "cellbench_version": ...}
    MODEL_DIR/state.safetensors    fitted arrays (when the method has any)

Registration sits beside each definition::

    @register_normalizer
    class AffineNormalizer(Normalizer):
        name = "affine"
        description = "global 3x4 least-squares colour map fitted on paired pixels"
"""

from __future__ import annotations

import inspect
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..data.sets import PairedSet, UnpairedSet
from ..errors import CheckpointError, ConfigError
from ..presets import load_preset
from ..registry import Registry

NORMALIZERS: Registry[type[Normalizer]] = Registry("normalizer")
META_FILE = "normalizer.json"
STATE_FILE = "state.safetensors"


def register_normalizer(cls: type[Normalizer]) -> type[Normalizer]:
    """Class decorator: register ``cls`` under ``cls.name`` with ``cls.description``."""
    NORMALIZERS.add(cls.name, cls, cls.description)
    return cls


class Normalizer(ABC):
    """Map source-system images (X) to the target system's appearance (Y).

    Subclasses set ``name`` and ``description``, take their options as keyword arguments
    (recorded in ``self.params`` and saved), and implement :meth:`fit`, :meth:`transform`,
    and — when they have fitted arrays — :meth:`state_dict` / :meth:`load_state_dict`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: "paired" methods need registered pairs; "unpaired" ones accept UnpairedSet too.
    data_kinds: ClassVar[tuple[str, ...]] = ("paired",)
    #: Whether transform needs fit first.
    needs_fit: ClassVar[bool] = True
    #: Trained by gradient descent (takes a ``device``; the benchmark passes its own).
    trainable: ClassVar[bool] = False
    #: Needs a feature network (VGG-16 or the WBC classifier's features) to train.
    uses_feature_net: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.fitted = not self.needs_fit
        #: Images that :meth:`transform` returned unchanged because the method failed on them
        #: (e.g. torchstain on a nearly empty image), counted from zero after every fit or load and
        #: summed over transform calls; the benchmark records it per method.
        self.passthrough_count = 0

    def networks(self) -> dict[str, torch.nn.Module]:
        """The method's networks by name (empty for closed-form methods; ``cellbench describe``)."""
        return {}

    # -- the interface -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        """Fit on training data; returns ``self``."""

    @abstractmethod
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        """Map a float ``(N, 3, H, W)`` batch in [0, 1]; same shape out."""

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(N, 3, H, W)`` float images in [0, 1] (CPU or CUDA) to Y's appearance.

        The output has the input's shape, dtype ``float32`` and values in [0, 1].
        """
        from ..tensors import check_batch

        check_batch(images)
        if not self.fitted:
            raise ConfigError(f"normalizer {self.name!r} must be fitted (or loaded) before transform")
        out = self._transform(images.float())
        return out.clamp_(0.0, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted arrays to save (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise CheckpointError(f"normalizer {self.name!r} has no state, but the model folder has some")

    def bind_run_dir(self, directory: Path, *, resume: bool = False) -> None:
        """Called by ``cellbench fit`` (and the benchmark) before :meth:`fit` with the output folder.

        Trained methods keep checkpoints, logs and sample grids there and continue from the last
        checkpoint when ``resume`` is true. Closed-form methods ignore it.
        """
        return None

    def to(self, device: torch.device | str) -> Self:
        """Move fitted arrays to ``device`` (no-op by default)."""
        return self

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``normalizer.json`` and ``state.safetensors`` atomically, with the process umask."""
        from ..fs import atomic_path, atomic_write

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if state:
            with atomic_path(d / STATE_FILE) as tmp:
                save_file(state, str(tmp))
        meta = {"method": self.name, "params": self.params, "cellbench_version": __version__,
                "fitted": self.fitted, "has_state": bool(state)}
        atomic_write(d / META_FILE, json.dumps(meta, indent=1, default=str))
        return d

    def check_state(self, state: dict[str, torch.Tensor], source: Path) -> None:
        """Refuse a saved state that this normalizer cannot use, before :meth:`load_state_dict`.

        The template is the state of a freshly built normalizer with the same options: the saved
        state must have all its keys, with its shapes (further keys are left to
        :meth:`load_state_dict`), and every floating-point array must be finite
        (a NaN matrix would write black images). Methods whose state has variable shapes override
        this. Raises :class:`CheckpointError` naming ``source``.
        """
        template = self.state_dict()
        missing = sorted(set(template) - set(state))
        if missing:  # keys beyond the template may be optional parts (e.g. lut3d's basis tables)
            extra = sorted(set(state) - set(template))
            what = f"lacks {missing[:3]}" + (f" and has unexpected {extra[:3]}" if extra else "")
            raise CheckpointError(f"{source}: not the state of a {self.name!r} model with these options ({what}); "
                                  "re-fit the model or pass the right --model folder")
        for key, ref in template.items():
            got = state[key]
            if tuple(got.shape) != tuple(ref.shape):
                raise CheckpointError(f"{source}: {key!r} has shape {tuple(got.shape)}, a {self.name!r} model with "
                                      f"these options needs {tuple(ref.shape)}; re-fit the model")
        for key, got in state.items():
            if (got.is_floating_point() or got.is_complex()) and not bool(torch.isfinite(got).all()):
                raise CheckpointError(f"{source}: {key!r} holds NaN or infinite values (a failed fit); "
                                      "re-fit the model")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Self:
        from safetensors import SafetensorError

        d = Path(directory)
        meta = read_meta(d)
        if meta["method"] != cls.name:
            raise CheckpointError(
                f"{d}: holds a {meta['method']!r} model, not {cls.name!r}; pass the right --model folder"
            )
        params = meta.get("params", {})
        if not isinstance(params, dict):
            raise CheckpointError(f"{d / META_FILE}: 'params' must be an object; re-fit the model")
        try:
            obj = cls(**params)
        except TypeError as exc:  # options this method does not take: another version or a hand edit
            raise CheckpointError(f"{d / META_FILE}: options do not fit {cls.name!r} ({exc}); re-fit the model") \
                from None
        if meta.get("has_state"):
            path = d / STATE_FILE
            try:
                state = load_file(str(path))
            except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
                raise CheckpointError(f"{path}: cannot read ({exc}); the file is truncated or not a "
                                      "safetensors file: re-fit the model") from None
            obj.check_state(state, path)
            obj.load_state_dict(state)
        obj.fitted = bool(meta.get("fitted", True))
        return obj

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: not a cellbench model folder ({META_FILE} missing); "
                              "create one with `cellbench fit`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["method"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: corrupt model description ({exc}); re-fit the model") from None
    return meta


def load_normalizer(directory: str | os.PathLike) -> Normalizer:
    """Load any saved normalizer, dispatching on the method recorded in ``normalizer.json``."""
    d = Path(directory)
    meta = read_meta(d)
    return NORMALIZERS.get(meta["method"]).load(d)


def create_normalizer(name: str, preset: str | None = None, **overrides: Any) -> Normalizer:
    """Instantiate a registered normalizer from a preset (``models/<name>.toml``) plus overrides."""
    cls = NORMALIZERS.get(name)
    params = {**load_preset(name, preset), **overrides}
    sig = inspect.signature(cls.__init__)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = set(params) - set(sig.parameters)
        if unknown:
            raise ConfigError(f"{name}: unknown option(s) {sorted(unknown)}; "
                              f"known: {sorted(k for k in sig.parameters if k != 'self')}")
    return cls(**params)
