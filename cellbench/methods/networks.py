"""The paper's learned normalizers: ``ccgan`` (sec. 5.2) and ``pcnet`` (sec. 5.3).

Both wrap a pair of :class:`~cellbench.nets.UNetGenerator` (G_xy: X -> Y, G_yx: Y -> X) trained by
:mod:`cellbench.train`; ``transform`` applies G_xy, in overlapping blended tiles when images are
larger than ``tile_size``. Options are keyword arguments, so presets (``models/ccgan.toml``,
``models/pcnet.toml``) and ``cellbench fit --set key=value`` set them alike.

Model folder (``cellbench fit --out DIR``)::

    DIR/normalizer.json, DIR/state.safetensors   the generators (keys "G_xy.*", "G_yx.*")
    DIR/checkpoints/                             training checkpoints (resume with --resume)
    DIR/train_log.jsonl, DIR/samples/*.png       per-iteration losses, sample grids
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Self

import torch

from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from ..nets import PatchDiscriminator, UNetGenerator, build_feature_net, transform_tiled
from ..train import CCGANTrainer, CCGANWeights, PCNetTrainer, PCNetWeights, TrainConfig, make_source
from .base import Normalizer, register_normalizer

log = logging.getLogger(__name__)
MODES = ("auto", "paired", "unpaired")


def _seeded(seed: int, build):
    """Build modules from ``seed`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class GeneratorPairNormalizer(Normalizer):
    """Shared options and inference of ``ccgan`` and ``pcnet`` (see their docstrings)."""

    data_kinds = ("paired", "unpaired")
    #: trained networks: the registry sweep leaves them to tests/test_nets.py and tests/test_train.py
    sweep_fit_cost = "heavy"
    #: the benchmark passes its ``device`` to trained methods
    trainable = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["mode"] not in MODES:
            raise ConfigError(f"mode={p['mode']!r}: choose one of {', '.join(MODES)}")
        self.G_xy, self.G_yx = _seeded(0, lambda: (self.make_generator(), self.make_generator()))
        self._run_dir: Path | None = None
        self._resume = False
        self._rank = 0

    # -- architecture as data ------------------------------------------------------------------
    def make_generator(self) -> UNetGenerator:
        p = self.params
        return UNetGenerator(
            p["gen_widths"],
            kernel_size=p["gen_kernel"],
            up_kernel_size=p["gen_up_kernel"],
            input_skip=p["input_skip"],
            upsample=p["upsample"],
            head_channels=p["head_channels"],
            head_depth=p["head_depth"],
        )

    def networks(self) -> dict[str, torch.nn.Module]:
        """The trained networks (for ``cellbench describe``)."""
        return {"generator": self.G_xy}

    def arch_signature(self) -> dict[str, Any]:
        keys = (
            "gen_widths",
            "gen_kernel",
            "gen_up_kernel",
            "input_skip",
            "upsample",
            "head_channels",
            "head_depth",
            "batch_size",
            "crop_size",
            "crop_focus",
            "crop_focus_unpaired",
            "ema_decay",
        ) + self.signature_keys
        return {
            k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.params.items() if k in keys
        }

    signature_keys: tuple[str, ...] = ()

    def train_config(self) -> TrainConfig:
        p = self.params
        decay = p["lr_decay_from"]
        return TrainConfig(
            iterations=int(p["iterations"]),
            batch_size=int(p["batch_size"]),
            lr=float(p["lr"]),
            betas=(p["beta1"], p["beta2"]),
            lr_decay_start=None if decay >= 1.0 else int(decay * int(p["iterations"])),
            bn_freeze_start=None if p["bn_freeze_from"] >= 1.0 else int(p["bn_freeze_from"] * int(p["iterations"])),
            ema_decay=float(p["ema_decay"]) if p["ema_decay"] else None,
            checkpoint_every=int(p["checkpoint_every"]),
            sample_every=int(p["sample_every"]),
            keep_checkpoints=int(p["keep_checkpoints"]),
            amp=p["amp"],
            channels_last=None if p["channels_last"] == "auto" else bool(p["channels_last"]),
            progress=bool(p["progress"]),
        )

    def _paired_flag(self) -> bool | None:
        return {"auto": None, "paired": True, "unpaired": False}[self.params["mode"]]

    def _source(self, data, seed: int):
        p = self.params
        crop = int(p["crop_size"]) or None
        mult = self.G_xy.multiple
        if crop is not None and crop % mult:
            raise ConfigError(
                f"crop_size {crop} must be a multiple of {mult} (2 ** number of generator levels)"
            )
        source, paired = make_source(
            data,
            paired=self._paired_flag(),
            batch_size=int(p["batch_size"]),
            crop=crop,
            seed=seed,
            rotate=bool(p["rotate"]),
            focus=float(p["crop_focus"]),
            focus_unpaired=None if p["crop_focus_unpaired"] is None else float(p["crop_focus_unpaired"]),
        )
        if source.crop % mult:
            raise ConfigError(
                f"training images of side {source.crop} must be cropped to a multiple of {mult}: "
                f"--set crop_size={source.crop // mult * mult}"
            )
        return source, paired

    # -- Normalizer interface ------------------------------------------------------------------
    def bind_run_dir(self, directory: Path, *, resume: bool = False) -> None:
        self._run_dir, self._resume = Path(directory), bool(resume)

    def _build_trainer(self, paired: bool, seed: int):
        raise NotImplementedError

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        source, paired = self._source(data, seed)
        trainer = self._build_trainer(paired, seed)  # checks weights etc. before any training
        if trainer.dist.rank:  # every rank draws its own batches; rank 0 those of a 1-process run
            source.generator.manual_seed(int(seed) + 1_000_003 * trainer.dist.rank)
        try:
            trainer.fit(source, resume=self._resume)
            self._rank = trainer.dist.rank
        finally:
            trainer.close()
        self.G_xy, self.G_yx = trainer.result("G_xy").cpu().eval(), trainer.result("G_yx").cpu().eval()
        self.to(self._device())
        self.fitted = True
        return self

    def _device(self) -> torch.device:
        d = self.params["device"]
        if d == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(d)

    @torch.no_grad()
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        g = self.G_xy.eval()
        dev = next(g.parameters()).device
        amp = self.params["amp"]
        use_amp = dev.type == "cuda" and amp != "off"
        dtype = torch.float16 if amp == "fp16" or not torch.cuda.is_bf16_supported() else torch.bfloat16

        def run(batch: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=dtype, enabled=use_amp):
                return g(batch).float()  # batch: tiles of images already on dev

        out = transform_tiled(  # tiles are cut and blended on the network's device
            run,
            images.to(dev),
            tile=int(self.params["tile_size"]),
            overlap=int(self.params["tile_overlap"]),
            multiple=g.multiple,
        )
        return out.to(images.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"G_xy.{k}": v for k, v in self.G_xy.state_dict().items()}
        out.update({f"G_yx.{k}": v for k, v in self.G_yx.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from ..train.checkpoint import load_module_weights

        load_module_weights({"G_xy": self.G_xy, "G_yx": self.G_yx}, state, Path("state.safetensors"))
        self.G_xy.eval()
        self.G_yx.eval()

    def to(self, device) -> Self:
        self.G_xy.to(device)
        self.G_yx.to(device)
        return self

    def save(self, directory) -> Path:
        if self._rank != 0:  # under torchrun only rank 0 writes the model folder
            return Path(directory)
        return super().save(directory)


_COMMON = dict(
    gen_widths=(64, 128, 256, 256, 256, 256, 256),
    gen_kernel=5,
    gen_up_kernel=5,
    input_skip=True,
    upsample="nearest",
    head_channels=0,
    head_depth=0,
    iterations=50_000,
    batch_size=4,
    crop_size=256,
    lr=2e-4,
    beta1=0.9,
    beta2=0.999,
    lr_decay_from=1.0,
    bn_freeze_from=1.0,
    ema_decay=0.0,
    mode="auto",
    rotate=True,
    crop_focus=0.0,
    crop_focus_unpaired=None,
    checkpoint_every=1000,
    sample_every=1000,
    keep_checkpoints=2,
    device="auto",
    amp="auto",
    channels_last="auto",
    progress=True,
    tile_size=256,
    tile_overlap=64,
    feature_net="vgg16",
    vgg_weights=None,
    classifier_dir=None,
)


@register_normalizer
class CCGANNormalizer(GeneratorPairNormalizer):
    """ccGAN (paper sec. 5.2): two U-Net generators and two PatchGAN discriminators trained on eq. (1)-(6).

    Parameters
    ----------
    gen_widths, gen_kernel, gen_up_kernel, input_skip, upsample, head_channels, head_depth:
        Generator architecture (:class:`~cellbench.nets.UNetGenerator`).
    disc_widths, disc_strides:
        Discriminator architecture (:class:`~cellbench.nets.PatchDiscriminator`).
    lambda_gen, lambda_cycle, lambda_identity, lambda_paired:
        Weights of eq. (6) (paper: 1, 10, 10, 10); unpaired data sets ``lambda_paired`` to 0.
    iterations, batch_size, crop_size, lr, beta1, beta2, lr_decay_from:
        Optimisation (paper: 50,000 iterations, batch 4, 256x256, Adam 2e-4, (0.9, 0.999));
        ``lr_decay_from`` < 1 decays the rate linearly to 0 from that fraction of the run.
    bn_freeze_from:
        < 1: from that fraction of the run the generators' batch norm uses its running statistics
        in training too (:class:`~cellbench.train.TrainConfig`), so training ends on the function
        inference runs; 1 (the paper) never.
    ema_decay:
        > 0: the returned generators are an exponential moving average of the trained ones with
        this decay (:class:`~cellbench.train.TrainConfig`); 0 (the paper) off.
    rotate, crop_focus, crop_focus_unpaired:
        Random 90-degree rotations of the crops (paper sec. 5.1); the fraction of crops centred on
        stained content rather than drawn uniformly (:class:`~cellbench.train.data.BatchSource`;
        0 in the paper); ``crop_focus`` for unpaired data (``None``: the same). Unpaired X and Y
        crops are focused independently, which unbalances what each system shows of the background.
    mode:
        ``auto`` (paired for a PairedSet), ``paired`` or ``unpaired`` (a CycleGAN).
    checkpoint_every, sample_every, keep_checkpoints:
        Trainer outputs in the folder given by ``bind_run_dir``.
    device, amp, channels_last:
        ``auto``/``cpu``/``cuda``; mixed precision ``auto``/``bf16``/``fp16``/``off`` (CUDA only).
    tile_size, tile_overlap:
        Inference tiling of large images.
    feature_net, vgg_weights, classifier_dir:
        Accepted for a uniform command line; ccGAN has no perceptual loss and ignores them.
    """

    name = "ccgan"
    description = "conditional cycleGAN: U-Net generators + 70x70 PatchGAN discriminators (paper sec. 5.2)"
    signature_keys = (
        "disc_widths",
        "disc_strides",
        "lambda_gen",
        "lambda_cycle",
        "lambda_identity",
        "lambda_paired",
        "mode",
    )

    def __init__(
        self,
        *,
        disc_widths=(128, 256, 512, 1024),
        disc_strides=(2, 2, 2, 1, 1),
        lambda_gen=1.0,
        lambda_cycle=10.0,
        lambda_identity=10.0,
        lambda_paired=10.0,
        **kw: Any,
    ) -> None:
        params = {**_COMMON, **kw}
        unknown = set(params) - set(_COMMON)
        if unknown:
            raise ConfigError(f"ccgan: unknown option(s) {sorted(unknown)}")
        super().__init__(
            disc_widths=disc_widths,
            disc_strides=disc_strides,
            lambda_gen=lambda_gen,
            lambda_cycle=lambda_cycle,
            lambda_identity=lambda_identity,
            lambda_paired=lambda_paired,
            **params,
        )

    def make_discriminator(self) -> PatchDiscriminator:
        return PatchDiscriminator(self.params["disc_widths"], strides=self.params["disc_strides"])

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.G_xy, "discriminator": _seeded(0, self.make_discriminator)}

    def _build_trainer(self, paired: bool, seed: int) -> CCGANTrainer:
        p = self.params
        if p["feature_net"] != "vgg16" or p["vgg_weights"] or p["classifier_dir"]:
            log.info("ccgan has no perceptual loss: feature_net/vgg_weights/classifier_dir are ignored")
        crop, side = int(p["crop_size"]), int(p["crop_size"])
        for stride in p["disc_strides"]:  # 4x4 kernels, padding 1
            side = (side + 2 - 4) // stride + 1
        if side < 1:
            raise ConfigError(
                f"crop_size {crop} is too small for the PatchGAN discriminator; use at least 32"
            )
        gens = _seeded(seed, lambda: (self.make_generator(), self.make_generator()))
        discs = _seeded(seed + 1, lambda: (self.make_discriminator(), self.make_discriminator()))
        weights = CCGANWeights(
            gen=p["lambda_gen"],
            cycle=p["lambda_cycle"],
            identity=p["lambda_identity"],
            paired=p["lambda_paired"] if paired else 0.0,
        )
        sig = {**self.arch_signature(), "paired": paired}
        return CCGANTrainer(
            gens,
            discs,
            self.train_config(),
            weights=weights,
            signature=sig,
            device=p["device"],
            run_dir=self._run_dir,
        )


@register_normalizer
class PCNetNormalizer(GeneratorPairNormalizer):
    """pcNet (paper sec. 5.3): two U-Net generators trained on eq. (3)-(5), (7), (8); no discriminators.

    Parameters as :class:`CCGANNormalizer`, plus:

    lambda_cycle, lambda_identity, lambda_paired, lambda_feat:
        Weights of eq. (7) (paper: all 10); unpaired data sets ``lambda_paired`` to 0 and compares
        batch-mean Gram matrices.
    lambda_feat_unpaired:
        ``lambda_feat`` for unpaired data (``None``: the same). Without the paired term the Gram
        loss is the only term that pulls G(x) towards system Y (cycle and identity are satisfied by
        the identity map), so a preset that damps it for paired data must restore it here.
    feature_net:
        ``vgg16`` (paper; ImageNet weights from ``vgg_weights`` or the torch hub cache, never
        downloaded) or ``classifier`` (the WBC classifier in ``classifier_dir``).
    feature_norm:
        ``none`` (paper: Gram matrices of the raw features) or ``auto`` (each Gram matrix divided
        by its Frobenius norm, for feature networks other than VGG-16 whose activation scale
        would otherwise swamp the other terms of eq. (7)).
    """

    name = "pcnet"
    #: the benchmark chooses VGG-16 or the WBC classifier for eq. (8)
    uses_feature_net = True
    description = (
        "perceptual cycle network: U-Net generators + VGG-16 Gram loss, no discriminators (sec. 5.3)"
    )
    signature_keys = (
        "lambda_cycle",
        "lambda_identity",
        "lambda_paired",
        "lambda_feat",
        "lambda_feat_unpaired",
        "mode",
        "feature_net",
        "feature_norm",
    )

    def __init__(
        self,
        *,
        lambda_cycle=10.0,
        lambda_identity=10.0,
        lambda_paired=10.0,
        lambda_feat=10.0,
        lambda_feat_unpaired=None,
        **kw: Any,
    ) -> None:
        params = {**_COMMON, "batch_size": 2, "feature_norm": "none", **kw}
        unknown = set(params) - set(_COMMON) - {"feature_norm"}
        if params["feature_norm"] not in ("none", "auto"):
            raise ConfigError(f"feature_norm={params['feature_norm']!r}: choose none or auto")
        if unknown:
            raise ConfigError(f"pcnet: unknown option(s) {sorted(unknown)}")
        super().__init__(
            lambda_cycle=lambda_cycle,
            lambda_identity=lambda_identity,
            lambda_paired=lambda_paired,
            lambda_feat=lambda_feat,
            lambda_feat_unpaired=lambda_feat_unpaired,
            **params,
        )

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"generator": self.G_xy}
        if self.params["feature_net"] == "vgg16":
            from ..nets import VGG16Features

            nets["feature_network"] = VGG16Features()  # frozen; its weights are read only for training
        return nets

    def _build_trainer(self, paired: bool, seed: int) -> PCNetTrainer:
        p = self.params
        phi = build_feature_net(
            p["feature_net"], vgg_weights=p["vgg_weights"], classifier_dir=p["classifier_dir"]
        )
        gens = _seeded(seed, lambda: (self.make_generator(), self.make_generator()))
        weights = PCNetWeights(
            cycle=p["lambda_cycle"],
            identity=p["lambda_identity"],
            paired=p["lambda_paired"] if paired else 0.0,
            feat=p["lambda_feat"]
            if paired or p["lambda_feat_unpaired"] is None
            else p["lambda_feat_unpaired"],
        )
        sig = {**self.arch_signature(), "paired": paired}
        trainer = PCNetTrainer(
            gens,
            phi,
            self.train_config(),
            weights=weights,
            paired=paired,
            signature=sig,
            device=p["device"],
            run_dir=self._run_dir,
        )
        trainer.normalize_gram = p["feature_norm"] == "auto"
        return trainer
