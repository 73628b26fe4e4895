"""Shared base of the paper's learned normalizers ``ccgan`` (:mod:`.ccgan`) and ``pcnet`` (:mod:`.pcnet`).

Both wrap a pair of :class:`~cellbench.nets.UNetGenerator` (G_xy: X -> Y, G_yx: Y -> X) trained by
:mod:`cellbench.train`; ``transform`` applies G_xy, in overlapping blended tiles when images are
larger than ``tile_size``. Options are keyword arguments checked into a typed :class:`NetConfig`
(a method adds its own fields in a subclass), so presets (``models/ccgan.toml``,
``models/pcnet.toml``) and ``cellbench fit --set key=value`` set them alike.

Model folder (``cellbench fit --out DIR``)::

    DIR/normalizer.json, DIR/state.safetensors   the generators (keys "G_xy.*", "G_yx.*")
    DIR/checkpoints/                             training checkpoints (resume with --resume)
    DIR/train_log.jsonl, DIR/samples/*.png       per-iteration losses, sample grids
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from ..colourspace import ciede2000, rgb_to_lab
from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from ..nets import UNetGenerator, transform_tiled
from ..nets.features import FEATURE_NETS
from ..options import check_choice, check_float, check_int, parse_bool
from ..train import TrainConfig, make_source
from ..train.checkpoint import load_module_weights
from ..train.distributed import DistInfo
from ..train.loop import AMP_CHOICES, Trainer
from .base import Normalizer

log = logging.getLogger(__name__)
MODES = ("auto", "paired", "unpaired")
UPSAMPLE_MODES = ("nearest", "bilinear")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def seeded(seed: int, build):
    """Build modules from ``seed`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def int_list(value: Any, name: str, *, min: int = 1) -> tuple[int, ...]:
    """A non-empty list of integers ``>= min`` (TOML gives lists), as a tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r}: must be a list of integers >= {min}, e.g. [16, 32, 32]")
    out = tuple(check_int(v, name, min=min) for v in value)
    if not out:
        raise ConfigError(f"{name}=[]: needs at least one entry")
    return out


def _fraction(value: Any, name: str) -> float:
    return check_float(value, name, min=0.0, max=1.0)


@dataclass(kw_only=True)
class NetConfig:
    """The options both networks share, typed and range-checked (paper sec. 5.4-5.5 defaults).

    Parameters
    ----------
    gen_widths, gen_kernel, gen_up_kernel, input_skip, upsample, head_channels, head_depth:
        Generator architecture (:class:`~cellbench.nets.UNetGenerator`).
    iterations, batch_size, crop_size, lr, beta1, beta2, lr_decay_from:
        Optimisation (paper: 50,000 iterations, batch 4, 256x256, Adam 2e-4, (0.9, 0.999));
        ``crop_size`` 0 trains on whole images; ``lr_decay_from`` < 1 decays the rate linearly
        to 0 from that fraction of the run.
    bn_freeze_from:
        < 1: from that fraction of the run the generators' batch norm uses its running statistics
        in training too (:class:`~cellbench.train.TrainConfig`), so training ends on the function
        inference runs; 1 (the paper) never.
    ema_decay:
        > 0: the returned generators are an exponential moving average of the trained ones with
        this decay (:class:`~cellbench.train.TrainConfig`); 0 (the paper) off.
    bn_momentum:
        PyTorch momentum of the trained networks' batch norm (weight of the new batch in the
        running averages): 0.1 PyTorch's default, 0.01 Keras' ``momentum=0.99`` (the paper's code).
    precise_bn_batches:
        > 0: after training, the generators' batch-norm statistics are re-estimated with the final
        weights over this many training batches (precise BN, Wu & Johnson 2021;
        :func:`cellbench.nets.batchnorm.precise_bn`); 0: the running averages of training.
    mode:
        ``auto`` (paired for a PairedSet), ``paired`` or ``unpaired`` (a CycleGAN).
    rotate, crop_focus, crop_focus_unpaired:
        Random 90-degree rotations of the crops (paper sec. 5.1); the fraction of crops centred on
        stained content rather than drawn uniformly (:class:`~cellbench.train.data.BatchSource`;
        0 in the paper); ``crop_focus`` for unpaired data (``None``: the same). Unpaired X and Y
        crops are focused independently, which unbalances what each system shows of the background.
    checkpoint_every, sample_every, keep_checkpoints:
        Trainer outputs in the folder given by ``bind_run_dir`` (``sample_every`` 0: no samples).
    device, amp, channels_last:
        ``auto``/``cpu``/``cuda[:N]``; mixed precision ``auto``/``bf16``/``fp16``/``off`` (CUDA
        only); ``auto``/true/false.
    progress:
        Show a progress bar while training.
    threads:
        CPU intra-op threads of the training loop; 0 (default): the thread policy of
        :mod:`cellbench.threads` (one thread for crops below 128 px, every usable core from 128).
    tile_size, tile_overlap:
        Inference tiling of large images.
    feature_net, vgg_weights, classifier_dir:
        The frozen feature network of pcNet's perceptual loss (eq. (8)); accepted by ccGAN for a
        uniform command line, which ignores them.
    """

    gen_widths: tuple[int, ...] = (64, 128, 256, 256, 256, 256, 256)
    gen_kernel: int = 5
    gen_up_kernel: int = 5
    input_skip: bool = True
    upsample: str = "nearest"
    head_channels: int = 0
    head_depth: int = 0
    iterations: int = 50_000
    batch_size: int = 4
    crop_size: int = 256
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    lr_decay_from: float = 1.0
    bn_freeze_from: float = 1.0
    ema_decay: float = 0.0
    bn_momentum: float = 0.1
    precise_bn_batches: int = 0
    mode: str = "auto"
    rotate: bool = True
    crop_focus: float = 0.0
    crop_focus_unpaired: float | None = None
    checkpoint_every: int = 1000
    sample_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | str = "auto"
    progress: bool = True
    threads: int = 0
    tile_size: int = 256
    tile_overlap: int = 64
    feature_net: str = "vgg16"
    vgg_weights: str | None = None
    classifier_dir: str | None = None

    def __post_init__(self) -> None:
        self.gen_widths = int_list(self.gen_widths, "gen_widths")
        for name in ("gen_kernel", "gen_up_kernel", "iterations", "batch_size", "checkpoint_every",
                     "keep_checkpoints", "tile_size"):
            setattr(self, name, check_int(getattr(self, name), name, min=1))
        for name in ("head_channels", "head_depth", "crop_size", "sample_every", "tile_overlap",
                     "precise_bn_batches", "threads"):
            setattr(self, name, check_int(getattr(self, name), name, min=0))
        if self.tile_overlap >= self.tile_size:
            raise ConfigError(f"tile_overlap={self.tile_overlap}: must be smaller than tile_size={self.tile_size}")
        self.lr = check_float(self.lr, "lr", min=0.0, min_exclusive=True)
        for name in ("beta1", "beta2"):
            value = check_float(getattr(self, name), name, min=0.0, max=1.0)
            if value == 1.0:
                raise ConfigError(f"{name}=1.0: Adam's {name} must lie in [0, 1)")
            setattr(self, name, value)
        for name in ("lr_decay_from", "bn_freeze_from", "crop_focus"):
            setattr(self, name, _fraction(getattr(self, name), name))
        if self.crop_focus_unpaired is not None:
            self.crop_focus_unpaired = _fraction(self.crop_focus_unpaired, "crop_focus_unpaired")
        self.ema_decay = check_float(self.ema_decay, "ema_decay", min=0.0, max=1.0)
        self.bn_momentum = check_float(self.bn_momentum, "bn_momentum", min=0.0, max=1.0)
        if self.ema_decay == 1.0:
            raise ConfigError("ema_decay=1.0: must lie in [0, 1) (0: off)")
        self.mode = check_choice(self.mode, "mode", MODES)
        self.upsample = check_choice(self.upsample, "upsample", UPSAMPLE_MODES)
        self.amp = check_choice(self.amp, "amp", AMP_CHOICES)
        self.feature_net = check_choice(self.feature_net, "feature_net", FEATURE_NETS)
        for name in ("input_skip", "rotate", "progress"):
            setattr(self, name, parse_bool(getattr(self, name), name))
        if self.channels_last != "auto":
            self.channels_last = parse_bool(self.channels_last, "channels_last")
        if not _DEVICE.match(str(self.device).strip().lower()):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        self.device = str(self.device).strip().lower()
        for name in ("vgg_weights", "classifier_dir"):
            value = getattr(self, name)
            setattr(self, name, None if value in (None, "") else str(value))

    @classmethod
    def from_options(cls, method: str, options: dict[str, Any]) -> Self:
        """The configuration of ``options``; an unknown key is a ConfigError with a "did you mean"."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"{method}: unknown option(s) {', '.join(hints)}; known: {', '.join(known)}")
        return cls(**options)

    def as_params(self) -> dict[str, Any]:
        """Every option by name (what ``normalizer.json`` records; loading gives the same config)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def train_config(self) -> TrainConfig:
        """The trainer's optimisation settings (fractions of the run turned into iterations)."""
        return TrainConfig(
            iterations=self.iterations,
            batch_size=self.batch_size,
            lr=self.lr,
            betas=(self.beta1, self.beta2),
            lr_decay_start=None if self.lr_decay_from >= 1.0 else int(self.lr_decay_from * self.iterations),
            bn_freeze_start=None if self.bn_freeze_from >= 1.0 else int(self.bn_freeze_from * self.iterations),
            ema_decay=self.ema_decay or None,
            bn_momentum=self.bn_momentum,
            precise_bn_batches=self.precise_bn_batches,
            checkpoint_every=self.checkpoint_every,
            sample_every=self.sample_every,
            keep_checkpoints=self.keep_checkpoints,
            amp=self.amp,
            channels_last=None if self.channels_last == "auto" else bool(self.channels_last),
            progress=self.progress,
            threads=self.threads or None,
        )


def ciede2000_rgb(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel CIEDE2000 between two sRGB batches ``(N, 3, H, W)`` in [0, 1] (``(N, H, W)``), for
    the trainers' logged batch-norm gap (:mod:`cellbench.colourspace`, the maths the metrics use)."""
    return ciede2000(rgb_to_lab(a.float().cpu()), rgb_to_lab(b.float().cpu()))


class GeneratorPairNormalizer(Normalizer):
    """Shared options, training set-up, inference and persistence of ``ccgan`` and ``pcnet``."""

    data_kinds = ("paired", "unpaired")
    #: trained networks: the registry sweep leaves them to tests/test_nets.py and tests/test_train.py
    sweep_fit_cost = "heavy"
    #: the benchmark passes its ``device`` to trained methods
    trainable = True
    #: the method's configuration class (a :class:`NetConfig` subclass)
    config_class: ClassVar[type[NetConfig]] = NetConfig
    #: configuration fields that must match for a checkpoint to resume, besides the architecture
    signature_keys: ClassVar[tuple[str, ...]] = ()
    ARCH_KEYS: ClassVar[tuple[str, ...]] = (
        "gen_widths", "gen_kernel", "gen_up_kernel", "input_skip", "upsample", "head_channels", "head_depth",
        "batch_size", "crop_size", "crop_focus", "crop_focus_unpaired", "ema_decay", "bn_momentum",
    )

    def __init__(self, **options: Any) -> None:
        self.config = self.config_class.from_options(self.name, options)
        super().__init__(**self.config.as_params())
        self.G_xy, self.G_yx = seeded(0, lambda: (self.make_generator(), self.make_generator()))
        self._run_dir: Path | None = None
        self._resume = False
        self._dist = DistInfo()

    # -- architecture as data ------------------------------------------------------------------
    def make_generator(self) -> UNetGenerator:
        c = self.config
        return UNetGenerator(
            c.gen_widths,
            kernel_size=c.gen_kernel,
            up_kernel_size=c.gen_up_kernel,
            input_skip=c.input_skip,
            upsample=c.upsample,
            head_channels=c.head_channels,
            head_depth=c.head_depth,
        )

    def networks(self) -> dict[str, torch.nn.Module]:
        """The trained networks (for ``cellbench describe``)."""
        return {"generator": self.G_xy}

    def arch_signature(self) -> dict[str, Any]:
        """What a checkpoint must have been trained with to resume (lists for tuples, as in JSON)."""
        keys = self.ARCH_KEYS + self.signature_keys
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.params.items() if k in keys}

    def train_config(self) -> TrainConfig:
        return self.config.train_config()

    def batch_source(self, data: PairedSet | UnpairedSet, seed: int):
        """``(source, paired)``: the training batches of ``data`` (random crops, rotations, focus)."""
        c = self.config
        crop = c.crop_size or None
        mult = self.G_xy.multiple
        if crop is not None and crop % mult:
            raise ConfigError(f"crop_size {crop} must be a multiple of {mult} (2 ** number of generator levels)")
        source, paired = make_source(
            data,
            paired={"auto": None, "paired": True, "unpaired": False}[c.mode],
            batch_size=c.batch_size,
            crop=crop,
            seed=seed,
            rotate=c.rotate,
            focus=c.crop_focus,
            focus_unpaired=c.crop_focus_unpaired,
        )
        if source.crop % mult:
            raise ConfigError(
                f"training images of side {source.crop} must be cropped to a multiple of {mult}: "
                f"--set crop_size={source.crop // mult * mult}"
            )
        return source, paired

    def build_trainer(self, paired: bool, seed: int) -> Trainer:
        """The method's trainer, built from ``seed`` (checks weights etc. before any training)."""
        raise NotImplementedError

    def trainer_options(self) -> dict[str, Any]:
        """Keyword arguments every trainer takes: device, run folder and process group."""
        return {"device": self.config.device, "run_dir": self._run_dir, "dist": self._dist,
                "colour_difference": ciede2000_rgb}

    # -- Normalizer interface ------------------------------------------------------------------
    def bind_run_dir(self, directory: Path, *, resume: bool = False) -> None:
        self._run_dir, self._resume = Path(directory), bool(resume)

    def bind_distributed(self, dist: DistInfo) -> None:
        """Train as one rank of the process group ``dist`` (:func:`cellbench.train.setup_distributed`).

        Every rank draws its own batches and averages gradients; only rank 0 writes the logs,
        samples and the model folder.
        """
        self._dist = dist

    @property
    def rank(self) -> int:
        """This process's rank in the bound process group (0 without one)."""
        return self._dist.rank

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        source, paired = self.batch_source(data, seed)
        trainer = self.build_trainer(paired, seed)
        if self.rank:  # every rank draws its own batches; rank 0 those of a 1-process run
            source.generator.manual_seed(int(seed) + 1_000_003 * self.rank)
        trainer.fit(source, resume=self._resume)
        self.G_xy, self.G_yx = trainer.result("G_xy").cpu().eval(), trainer.result("G_yx").cpu().eval()
        self.to(self._device())
        self.fitted = True
        return self

    def _device(self) -> torch.device:
        d = self.config.device
        if d == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(d)

    @torch.no_grad()
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        g = self.G_xy.eval()
        dev = next(g.parameters()).device
        amp = self.config.amp
        use_amp = dev.type == "cuda" and amp != "off"
        dtype = torch.float16 if amp == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16

        engine = getattr(self, "inference_engine", None)  # cellbench.nets.engines.with_engine (CPU)

        def run(batch: torch.Tensor) -> torch.Tensor:
            if engine is not None and dev.type == "cpu":
                return engine(batch).float()
            with torch.autocast("cuda", dtype=dtype, enabled=use_amp):
                return g(batch).float()  # batch: tiles of images already on dev

        out = transform_tiled(  # tiles are cut and blended on the network's device
            run,
            images.to(dev),
            tile=self.config.tile_size,
            overlap=self.config.tile_overlap,
            multiple=g.multiple,
        )
        return out.to(images.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"G_xy.{k}": v for k, v in self.G_xy.state_dict().items()}
        out.update({f"G_yx.{k}": v for k, v in self.G_yx.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_module_weights({"G_xy": self.G_xy, "G_yx": self.G_yx}, state, Path("state.safetensors"))
        self.G_xy.eval()
        self.G_yx.eval()

    def to(self, device) -> Self:
        self.G_xy.to(device)
        self.G_yx.to(device)
        return self

    def save(self, directory) -> Path:
        if self.rank != 0:  # in a process group only rank 0 writes the model folder
            return Path(directory)
        return super().save(directory)


__all__ = ["GeneratorPairNormalizer", "NetConfig", "int_list", "seeded"]
