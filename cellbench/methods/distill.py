"""Distilled normalizers: fast students fitted to any fitted normalizer's outputs (issue #17).

:func:`distill` applies a fitted *teacher* (any :class:`~cellbench.methods.base.Normalizer`) to the
training X images and fits a *student* on the pairs ``(x, teacher(x))``; the students are ordinary
registered normalizers, so they also fit directly on registered pairs (Y as the teacher):

* ``lut3d`` (:class:`LUT3DNormalizer`): a 3D colour lookup table (default 33^3, tetrahedral or
  trilinear interpolation) fitted by regularised least squares with a smoothness prior
  (:mod:`cellbench.nets.lut`; Zeng et al., IEEE TPAMI 2020); optionally image-adaptive, as in
  that paper: ``basis = K`` tables blended per image by weights predicted from the image's colour
  statistics. Thousands of 256x256 images per second on two CPU cores.
* ``pixelnet`` (:class:`PixelNetNormalizer`): a StainNet-like network of 1x1 convolutions, i.e. a
  per-pixel MLP (Kang et al., "StainNet: a fast and robust stain normalization network",
  Frontiers in Medicine 8, 2021, which distils StainGAN into 3 such layers).
* ``ctx`` (:class:`CtxNormalizer`): a small-context student, a 2-level U-Net of a few thousand
  parameters, for teachers whose output depends on a pixel's neighbourhood (HM's soft regions,
  the simulated X system's local contrast enhancement), which no per-pixel map can follow.

A per-pixel student (``lut3d``, ``pixelnet``) can only learn ``E[teacher(x) | colour x]``: where the
teacher maps one colour differently in different places, the student's error against the
teacher's targets is the spread of that conditional distribution (``benchmarks/distill_quality.py``
reports it).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from ..colourspace import rgb_to_lab
from ..data.sets import PairedSet, UnpairedSet
from ..errors import ConfigError
from ..nets.lut import INTERPOLATIONS, apply_lut, colour_histogram, fit_lut, identity_lut, interp_weights, run_jobs
from ..options import check_choice, check_float, check_int
from ..tensors import check_batch
from .base import Normalizer, create_normalizer, register_normalizer
from .simple import require_pairs

log = logging.getLogger(__name__)

DISTILL_KINDS = ("lut3d", "pixelnet", "ctx")

__all__ = ["DISTILL_KINDS", "distill", "teacher_outputs", "LUT3DNormalizer", "PixelNetNormalizer",
           "CtxNormalizer", "CtxNet", "CtxPoolNet"]


def teacher_outputs(teacher: Normalizer, images: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """``teacher.transform`` over ``images`` ``(N, 3, H, W)`` in batches (CPU result, float32)."""
    outs = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            outs.append(teacher.transform(images[s:s + batch_size]).float().cpu())
    return torch.cat(outs) if outs else images.new_zeros(images.shape)


def distill(teacher: Normalizer, data: PairedSet | UnpairedSet, kind: str, *, seed: int = 0,
            **options: Any) -> Normalizer:
    """Fit a fast ``kind`` student to a fitted ``teacher``'s outputs on ``data``'s X images.

    Parameters
    ----------
    teacher:
        Any fitted normalizer (used through ``transform`` on the device it sits on).
    data:
        The training data: a :class:`PairedSet` (its ``x``) or an :class:`UnpairedSet` (its
        ``x.images``); Y is not read.
    kind:
        ``"lut3d"``, ``"pixelnet"`` or ``"ctx"`` (:data:`DISTILL_KINDS`).
    seed:
        The student's fit is deterministic for a given seed.
    options:
        The student's options (see its class), e.g. ``size=17`` for a ``lut3d``.

    Returns
    -------
    Normalizer
        The fitted student (registry name ``kind``; ``params["teacher"]`` names the teacher).
    """
    if kind not in DISTILL_KINDS:
        raise ConfigError(f"distill kind {kind!r}: choose one of {', '.join(DISTILL_KINDS)}")
    if not getattr(teacher, "fitted", True):
        raise ConfigError(f"distill: the teacher {teacher.name!r} must be fitted (or loaded) first")
    if isinstance(data, PairedSet):
        x, labels, ids, masks = data.x, list(data.labels), list(data.ids), data.masks
    elif isinstance(data, UnpairedSet):
        x, labels, ids, masks = data.x.images, list(data.x.labels), list(data.x.ids), data.x.masks
    else:
        raise ConfigError(f"distill: data must be a PairedSet or an UnpairedSet, got {type(data).__name__}")
    if len(x) == 0:
        raise ConfigError("distill: the training split is empty")
    student = create_normalizer(kind, **{**options, "teacher": getattr(teacher, "name", type(teacher).__name__)})
    y = teacher_outputs(teacher, x)
    log.info("distilling %s into %s on %d images", teacher.name, kind, len(x))
    return student.fit(PairedSet(x=x.float().cpu(), y=y, labels=labels, ids=ids, masks=masks), seed=seed)


def _image_stats(images: torch.Tensor) -> torch.Tensor:
    """Per-image colour statistics ``(N, 6)``: mean and standard deviation of each channel."""
    flat = images.reshape(images.shape[0], 3, -1)
    std, mean = torch.std_mean(flat, dim=2)
    return torch.cat([mean, std], 1)


def _second_difference_penalty(lut: torch.Tensor) -> torch.Tensor:
    """Sum of squared second differences of ``(..., m, m, m)`` tables along the three lattice axes."""
    total = lut.new_zeros(())
    for dim in (-1, -2, -3):
        total = total + lut.diff(n=2, dim=dim).square().sum()
    return total


@register_normalizer
class LUT3DNormalizer(Normalizer):
    """3D colour lookup table fitted by regularised least squares (:func:`cellbench.nets.lut.fit_lut`).

    Parameters
    ----------
    size:
        Lattice points per axis (33: the colour-grading standard; the table is 431 kB).
    interpolation:
        ``"tetrahedral"`` (4 lookups per pixel) or ``"trilinear"`` (8).
    smoothness:
        Weight of the second-difference prior relative to the mean squared error over the training
        pixels: it fills lattice cells that few training colours reach.
    basis:
        0: one global table. ``K >= 2``: image-adaptive (Zeng et al. 2020): ``K`` tables blended with
        per-image weights ``w = W s + b`` predicted from the image's standardised colour statistics
        ``s`` (mean and standard deviation per channel), trained jointly by Adam from the global fit.
    iterations, lr:
        Adam steps and learning rate of the adaptive form.
    teacher:
        The teacher's registry name when distilled (provenance only).
    """

    name = "lut3d"
    description = "3D colour LUT (33^3, tetrahedral) by regularised least squares; a fast student of any method"

    def __init__(self, size: int = 33, interpolation: str = "tetrahedral", smoothness: float = 1e-4,
                 basis: int = 0, iterations: int = 300, lr: float = 2e-3, teacher: str | None = None) -> None:
        size = check_int(size, "size", min=2, max=129)
        interpolation = check_choice(interpolation, "interpolation", INTERPOLATIONS)
        smoothness = check_float(smoothness, "smoothness", min=0.0)
        basis = check_int(basis, "basis", min=0, max=16)
        if basis == 1:
            raise ConfigError("basis=1: use 0 for one global table, or K >= 2 basis tables for the adaptive form")
        super().__init__(size=size, interpolation=interpolation, smoothness=smoothness, basis=basis,
                         iterations=check_int(iterations, "iterations", min=0), lr=check_float(lr, "lr", min=0.0),
                         teacher=teacher)
        self.lut = identity_lut(size)
        self.basis_luts: torch.Tensor | None = None  # (K, 3, m, m, m)
        self.predictor: torch.Tensor | None = None  # (K, 7): weights over [stats (6), 1]
        self.stat_norm: torch.Tensor | None = None  # (2, 6): mean, std of the training statistics

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        data = require_pairs(data, self.name)
        p = self.params
        xm, ym, cnt = colour_histogram(data.x, data.y)
        self.lut = fit_lut(xm, ym, weights=cnt, size=p["size"], interpolation=p["interpolation"],
                           smoothness=p["smoothness"])
        if p["basis"]:
            self._fit_adaptive(data, seed)
        self.fitted = True
        return self

    def _fit_adaptive(self, data: PairedSet, seed: int) -> None:
        """Zeng et al. (2020) eq. (3)-(6): ``out = sum_k w_k(image) LUT_k(x)``, MSE + smoothness."""
        p = self.params
        k, m = p["basis"], p["size"]
        gen = torch.Generator().manual_seed(seed)
        stats = _image_stats(data.x)
        norm = torch.stack([stats.mean(0), stats.std(0).clamp_min(1e-6)])
        s = torch.cat([(stats - norm[0]) / norm[1], torch.ones(len(stats), 1)], 1)  # (N, 7)
        basis = torch.zeros(k, 3, m, m, m)
        basis[0] = self.lut
        basis.requires_grad_(True)
        pred = torch.zeros(k, 7)
        pred[0, -1] = 1.0  # starts as the global fit
        pred.requires_grad_(True)
        opt = torch.optim.Adam([basis, pred], lr=p["lr"])
        n, _, h, w = data.x.shape
        per_step = 1 << 16
        lam = p["smoothness"] / m**3
        for _ in range(p["iterations"]):
            img = torch.randint(0, n, (per_step,), generator=gen)
            pix = torch.randint(0, h * w, (per_step,), generator=gen)
            xs = data.x.reshape(n, 3, -1)[img, :, pix]  # (P, 3)
            ys = data.y.reshape(n, 3, -1)[img, :, pix]
            idx, wt = interp_weights(xs, m, p["interpolation"])
            vals = (basis.reshape(k, 3, -1)[:, :, idx] * wt).sum(-1)  # (K, 3, P)
            weights = s[img] @ pred.T  # (P, K)
            out = torch.einsum("kcp,pk->pc", vals, weights)
            loss = F.mse_loss(out, ys) + lam * _second_difference_penalty(basis)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.basis_luts = basis.detach().clone()
        self.predictor = pred.detach().clone()
        self.stat_norm = norm

    # -- inference -----------------------------------------------------------------------------
    def image_luts(self, images: torch.Tensor) -> torch.Tensor:
        """The adaptive form's per-image tables ``(N, 3, m, m, m)``."""
        assert self.basis_luts is not None and self.predictor is not None and self.stat_norm is not None
        stats = _image_stats(images.float())
        norm = self.stat_norm.to(images.device)
        s = torch.cat([(stats - norm[0]) / norm[1], torch.ones(len(stats), 1, device=images.device)], 1)
        w = s @ self.predictor.to(images.device).T  # (N, K)
        basis = self.basis_luts.to(images.device)
        return torch.einsum("nk,kcdhw->ncdhw", w, basis).clamp_(0.0, 1.0)

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """As :meth:`Normalizer.transform`; the CPU kernel already clamps, so no second pass over the output."""
        check_batch(images)
        if not self.fitted:
            raise ConfigError(f"normalizer {self.name!r} must be fitted (or loaded) before transform")
        out = self._transform(images if images.dtype == torch.float32 else images.float())
        return out if out.device.type == "cpu" else out.clamp_(0.0, 1.0)

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        interp = self.params["interpolation"]
        if self.basis_luts is None:
            return apply_lut(images, self.lut, interp)
        luts = self.image_luts(images)
        out = torch.empty_like(images)
        for i in range(len(images)):
            apply_lut(images[i:i + 1], luts[i], interp, out=out[i:i + 1])
        return out

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"lut": self.lut}
        if self.basis_luts is not None:
            state.update(basis_luts=self.basis_luts, predictor=self.predictor, stat_norm=self.stat_norm)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        m = self.params["size"]
        if tuple(state["lut"].shape) != (3, m, m, m):
            raise ConfigError(f"lut3d: stored table {tuple(state['lut'].shape)} does not match size={m}")
        self.lut = state["lut"].float().contiguous()
        if "basis_luts" in state:
            self.basis_luts = state["basis_luts"].float()
            self.predictor = state["predictor"].float()
            self.stat_norm = state["stat_norm"].float()

    def to(self, device) -> Self:
        self.lut = self.lut.to(device)
        for name in ("basis_luts", "predictor", "stat_norm"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self


# -- pixelnet ------------------------------------------------------------------------------------
def _balanced_pixels(data: PairedSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct input colours (8-bit bins) with mean targets and pixel counts, as float32 tensors."""
    xm, ym, cnt = colour_histogram(data.x, data.y)
    return torch.from_numpy(xm).float(), torch.from_numpy(ym).float(), torch.from_numpy(cnt).float()


class PixelNet(nn.Module):
    """StainNet-style per-pixel network: 1x1 convolutions ``3 -> hidden (-> hidden)* -> 3`` with ReLU."""

    def __init__(self, hidden: int = 16, layers: int = 3, residual: bool = False) -> None:
        super().__init__()
        widths = [3] + [hidden] * (layers - 1) + [3]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.residual = bool(residual)
        if self.residual:  # output = input + correction: the untrained network is the identity
            nn.init.zeros_(self.convs[-1].weight)
            nn.init.zeros_(self.convs[-1].bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = images
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.relu(h, inplace=True)
        return h + images if self.residual else h

    def forward_pixels(self, px: torch.Tensor) -> torch.Tensor:
        """The same network on ``(P, 3)`` colours (training)."""
        h = px
        for i, conv in enumerate(self.convs):
            h = F.linear(h, conv.weight[:, :, 0, 0], conv.bias)
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return h + px if self.residual else h


def lab_pixels(px: torch.Tensor) -> torch.Tensor:
    """Differentiable sRGB -> CIELAB of ``(P, 3)`` colours, in their precision, clipped to [0, 1] first
    (:func:`cellbench.colourspace.rgb_to_lab`)."""
    planes = px.clamp(0, 1).T.reshape(1, 3, -1, 1)
    return rgb_to_lab(planes, dtype=px.dtype).reshape(3, -1).T


def _train_pixels(net: nn.Module, xs: torch.Tensor, ys: torch.Tensor, cnt: torch.Tensor, *, iterations: int,
                  lr: float, batch: int, seed: int, loss: str = "rgb", balance: float = 1.0) -> None:
    """Adam on colours drawn with probability proportional to ``count ** balance`` (1: as often as
    they occur; 0: every colour bin alike); cosine-decayed rate. ``loss``: ``"rgb"`` (mean squared
    error) or ``"lab"`` (squared CIELAB difference / 100^2, plus the RGB term, which keeps a gradient
    where the prediction leaves the gamut)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(iterations, 1))))
    weights = cnt.pow(balance) if balance != 1.0 else cnt
    lab_targets = lab_pixels(ys) if loss == "lab" else None
    for _ in range(iterations):
        pick = torch.multinomial(weights, batch, replacement=True, generator=gen)
        pred = net.forward_pixels(xs[pick])
        err = F.mse_loss(pred, ys[pick])
        if lab_targets is not None:
            err = err + F.mse_loss(lab_pixels(pred), lab_targets[pick]) / 1e4
        opt.zero_grad()
        err.backward()
        opt.step()
        sched.step()


class NetStudent(Normalizer):
    """Shared persistence of the students that hold one network in ``self.net`` (pixelnet, ctx)."""

    net: nn.Module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.net.eval()

    def to(self, device) -> Self:
        self.net.to(device)
        return self


@register_normalizer
class PixelNetNormalizer(NetStudent):
    """StainNet-like per-pixel network (Kang et al., Frontiers in Medicine 2021).

    Parameters
    ----------
    hidden:
        Channels of the hidden 1x1 layers (StainNet: 32; 16 by default here: a quarter of the
        multiply-adds, and 32 hidden vectors fit the 32 vector registers of the compiled kernel,
        :mod:`cellbench.nets.pixel_kernel`: about 1,500 images/s at 256x256 on two CPU cores).
    layers:
        1x1 convolutions (StainNet: 3).
    iterations, lr, batch_pixels:
        Adam on training colours (7-bit bins, drawn by ``count ** balance``), cosine-decayed rate.
    residual:
        Output = input + the network's correction, the last layer starting at zero (the untrained
        student is the identity); False is StainNet's plain form.
    loss:
        ``"rgb"`` (mean squared error) or ``"lab"`` (plus the squared CIELAB difference / 100^2: the
        error the CIEDE2000 figures see, where dark nucleus colours weigh more than in RGB).
    balance:
        Exponent of the bins' pixel counts in the sampling weights: 1 fits the colours as often as
        they occur (background dominates), 0 fits every colour bin alike (as a LUT does).

    The defaults (residual, ``"lab"``, 0.5) were chosen on the simulated training split against
    StainNet's plain form (no residual, RGB loss, colours as often as they occur): distilled from
    poly and hm, the student's WBC CIEDE2000 on the simulated test split was 4.35 / 4.44 against the
    teachers' 4.18 / 4.27, where the plain form reached 5.45 / 5.51 (``benchmarks/distill_quality.py``,
    docs/fast-transforms.md).
    teacher:
        The teacher's registry name when distilled (provenance only).
    """

    #: trained by gradient descent for minutes: the registry sweep leaves it to tests/test_distill.py
    sweep_fit_cost = "heavy"

    name = "pixelnet"
    description = "StainNet-like 1x1-convolution network (per-pixel MLP); a fast student of any method"

    def __init__(self, hidden: int = 16, layers: int = 3, iterations: int = 1500, lr: float = 1e-2,
                 batch_pixels: int = 8192, residual: bool = True, loss: str = "lab", balance: float = 0.5,
                 teacher: str | None = None) -> None:
        super().__init__(hidden=check_int(hidden, "hidden", min=1), layers=check_int(layers, "layers", min=2),
                         iterations=check_int(iterations, "iterations", min=0), lr=check_float(lr, "lr", min=0.0),
                         batch_pixels=check_int(batch_pixels, "batch_pixels", min=1), residual=bool(residual),
                         loss=check_choice(loss, "loss", ("rgb", "lab")),
                         balance=check_float(balance, "balance", min=0.0, max=1.0), teacher=teacher)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = PixelNet(self.params["hidden"], self.params["layers"], self.params["residual"]).eval()

    def networks(self) -> dict[str, nn.Module]:
        return {"pixelnet": self.net}

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        data = require_pairs(data, self.name)
        p = self.params
        xs, ys, cnt = _balanced_pixels(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = PixelNet(p["hidden"], p["layers"], p["residual"])
        _train_pixels(net, xs, ys, cnt, iterations=p["iterations"], lr=p["lr"], batch=p["batch_pixels"], seed=seed,
                      loss=p["loss"], balance=p["balance"])
        self.net = net.eval()
        self.fitted = True
        return self

    @torch.no_grad()
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        dev = next(net.parameters()).device
        x = images.to(dev)
        if dev.type != "cpu":
            return net(x).to(images.device)
        return pixel_mlp_cpu(net, x)


#: pixels per step of :func:`pixel_mlp_cpu`: ``hidden x PIXEL_CHUNK`` float32 activations (256 KiB at
#: 16 channels) stay in a core's L2 cache between the layers
PIXEL_CHUNK = 4096


def _run_split(run, n: int, threads: int | None) -> None:
    """``run(lo, hi)`` over ``[0, n)`` in as many contiguous ranges as threads (default torch's intra-op
    count; at most ``n``), on the kernels' thread pool (:func:`cellbench.nets.lut.run_jobs`)."""
    parts = max(1, min(threads or torch.get_num_threads(), n))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    run_jobs(run, [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a], parts)


def pixel_mlp_cpu(net: PixelNet, x: torch.Tensor, *, chunk: int = PIXEL_CHUNK, threads: int | None = None,
                  kernel: bool = True) -> torch.Tensor:
    """``net(x)`` on the CPU, fast: through the compiled pixel kernel (:mod:`cellbench.nets.pixel_kernel`)
    where it runs (``kernel``), else the 1x1 convolutions as matrix products on cache-sized pixel chunks.

    A 1x1 convolution over ``(C, H*W)`` planes is ``W @ X + b``. Run on a whole 256x256 image, each
    layer writes ``hidden x 65,536`` floats (4 MiB at 16 channels) to memory and the next reads them
    back; on ``chunk`` pixels all layers run in cache, and each output chunk is written once. The
    images are shared among ``threads`` Python threads (default: torch's intra-op threads), each
    running its images' chunks one after another (the products release the GIL, and each is too
    small to be worth splitting further). Same values as ``net(x)`` up to float rounding (tested).
    """
    from ..nets.pixel_kernel import apply_pixel_mlp

    if kernel:  # the compiled kernel (whole network in registers), where it runs; else the chunked products
        fast = apply_pixel_mlp(x, [(conv.weight[:, :, 0, 0], conv.bias) for conv in net.convs],
                               residual=net.residual, threads=threads)
        if fast is not None:
            return fast
    n, c, h, w = x.shape
    planes = x.reshape(n, c, h * w)
    out = torch.empty(n, 3, h * w, dtype=x.dtype)
    layers = [(conv.weight[:, :, 0, 0].detach().to(x.dtype).contiguous(),
               conv.bias.detach().to(x.dtype)[:, None].contiguous()) for conv in net.convs]
    last = len(layers) - 1

    @torch.no_grad()  # grad mode is per thread: the pool's threads start with it on
    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            for s in range(0, h * w, chunk):
                t = planes[i, :, s:s + chunk]
                for k, (wk, bk) in enumerate(layers):
                    t = torch.addmm(bk, wk, t)
                    if k < last:
                        t.relu_()
                out[i, :, s:s + chunk] = t + planes[i, :, s:s + chunk] if net.residual else t

    _run_split(run, n, threads)
    return out.reshape(n, 3, h, w)



# -- ctx -----------------------------------------------------------------------------------------
class CtxNet(nn.Module):
    """A 2-level U-Net of a few thousand parameters: per-pixel colour map plus local context.

    ``x`` at full resolution -> 3x3 convolution (``local`` channels: edges, local contrast); at
    1/2 and 1/4 resolution (average pooling) 3x3 convolutions of ``widths`` channels see a
    neighbourhood of about 20 pixels, decoded back with a 1x1 convolution and nearest upsampling;
    a 1x1 head (``head`` channels) combines the input colour, the local and the context features.
    The output is ``x`` plus the head's residual, so the untrained network is the identity.
    Inputs need sides divisible by 4 (:meth:`CtxNormalizer` pads).
    """

    def __init__(self, widths: tuple[int, int] = (8, 8), local: int = 4, head: int = 16) -> None:
        super().__init__()
        w1, w2 = (int(v) for v in widths)
        self.local = nn.Conv2d(3, local, 3, padding=1, padding_mode="replicate") if local else None
        self.enc1 = nn.Conv2d(3, w1, 3, padding=1, padding_mode="replicate")
        self.enc2 = nn.Conv2d(w1, w2, 3, padding=1, padding_mode="replicate")
        self.dec1 = nn.Conv2d(w1 + w2, w1, 1)
        self.head1 = nn.Conv2d(3 + w1 + local, head, 1)
        self.head2 = nn.Conv2d(head, 3, 1)
        nn.init.zeros_(self.head2.weight)
        nn.init.zeros_(self.head2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = F.relu(self.enc1(F.avg_pool2d(x, 2)))
        e2 = F.relu(self.enc2(F.avg_pool2d(e1, 2)))
        d1 = F.relu(self.dec1(torch.cat([e1, F.interpolate(e2, scale_factor=2.0, mode="nearest")], 1)))
        feats = [x, F.interpolate(d1, scale_factor=2.0, mode="nearest")]
        if self.local is not None:
            feats.append(F.relu(self.local(x)))
        return x + self.head2(F.relu(self.head1(torch.cat(feats, 1))))


class CtxPoolNet(nn.Module):
    """A per-pixel MLP on the colour and its local means: context at the cost of a pixel network.

    Features per pixel: the colour ``x`` and, per scale ``s`` of ``scales``, the mean colour of its
    ``s x s`` neighbourhood (average pooling by ``s``, bilinear interpolation back to full size), so
    ``3 (1 + len(scales))`` inputs; then 1x1 convolutions ``-> hidden (-> hidden)* -> 3`` with ReLU,
    added to ``x`` (the last layer starts at zero: the untrained network is the identity). A map of
    the form ``f(x, local mean)`` covers local contrast enhancement (unsharp masking) and
    region-dependent colour maps, which no per-pixel map can follow; the per-pixel part runs in the
    compiled kernel of :mod:`cellbench.nets.pixel_kernel`.
    """

    def __init__(self, scales: tuple[int, ...] = (4, 16), hidden: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.scales = tuple(int(v) for v in scales)
        widths = [3 * (1 + len(self.scales))] + [hidden] * (layers - 1) + [3]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:], strict=True))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)
        self.residual = True

    def feature_list(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The colour, then its local means, each ``(N, 3, H, W)`` (sides need not divide by a scale)."""
        _, _, h, w = x.shape
        feats = [x]
        for sc in self.scales:
            m = F.adaptive_avg_pool2d(x, (max(1, -(-h // sc)), max(1, -(-w // sc))))
            feats.append(F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False))
        return feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3 (1 + len(scales)), H, W)``: :meth:`feature_list` concatenated."""
        return torch.cat(self.feature_list(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = F.relu(h, inplace=True)
        return x + h


@register_normalizer
class CtxNormalizer(NetStudent):
    """Small-context student trained on random crops of the training pairs.

    Parameters
    ----------
    arch:
        ``"pool"`` (default): :class:`CtxPoolNet`, a pixel network on the colour and its local means
        (``scales``, ``hidden``), run by the compiled pixel kernel (over 1,000 images/s at 256x256 on
        two cores); ``"unet"``: :class:`CtxNet`, a 2-level U-Net (``widths``, ``local``, ``head``),
        about 100 images/s.
    scales, hidden:
        :class:`CtxPoolNet` architecture.
    widths, local, head:
        :class:`CtxNet` architecture.
    iterations, lr, batch_size, crop_size:
        Adam on ``batch_size`` random ``crop_size`` crops per step, cosine-decayed rate.
    loss:
        ``"rgb"`` (mean squared error) or ``"lab"`` (plus the squared CIELAB difference / 100^2, as
        :class:`PixelNetNormalizer`).
    teacher:
        The teacher's registry name when distilled (provenance only).
    """

    #: trained by gradient descent for minutes: the registry sweep leaves it to tests/test_distill.py
    sweep_fit_cost = "heavy"

    name = "ctx"
    description = "small-context student: a pixel network on the colour and its local means (context teachers)"

    def __init__(self, arch: str = "pool", scales: tuple[int, ...] | list[int] = (4, 16), hidden: int = 16,
                 widths: tuple[int, int] | list[int] = (8, 8), local: int = 4, head: int = 16,
                 iterations: int = 1500, lr: float = 3e-3, batch_size: int = 16, crop_size: int = 64,
                 loss: str = "rgb", teacher: str | None = None) -> None:
        arch = check_choice(arch, "arch", ("pool", "unet"))
        widths = tuple(int(v) for v in widths)
        if len(widths) != 2 or min(widths) < 1:
            raise ConfigError(f"widths={widths!r}: two positive channel counts expected (e.g. [8, 8])")
        scales = tuple(int(v) for v in scales)
        if not scales or min(scales) < 2:
            raise ConfigError(f"scales={list(scales)!r}: one or more pooling factors >= 2 expected (e.g. [4, 16])")
        crop = check_int(crop_size, "crop_size", min=8)
        if crop % 4:
            raise ConfigError(f"crop_size={crop}: must be a multiple of 4 (the network's two levels)")
        super().__init__(arch=arch, scales=list(scales), hidden=check_int(hidden, "hidden", min=1), widths=widths,
                         local=check_int(local, "local", min=0), head=check_int(head, "head", min=1),
                         iterations=check_int(iterations, "iterations", min=0), lr=check_float(lr, "lr", min=0.0),
                         batch_size=check_int(batch_size, "batch_size", min=1), crop_size=crop,
                         loss=check_choice(loss, "loss", ("rgb", "lab")), teacher=teacher)
        self.net = self._build(0)

    def _build(self, seed: int) -> CtxNet | CtxPoolNet:
        p = self.params
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if p["arch"] == "pool":
                return CtxPoolNet(tuple(p["scales"]), p["hidden"]).eval()
            return CtxNet(tuple(p["widths"]), p["local"], p["head"]).eval()

    def networks(self) -> dict[str, nn.Module]:
        return {"ctx": self.net}

    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0) -> Self:
        data = require_pairs(data, self.name)
        p = self.params
        net = self._build(seed).train()
        n, _, h, w = data.x.shape
        crop = min(p["crop_size"], h // 4 * 4, w // 4 * 4)
        if crop < 4:
            raise ConfigError(f"ctx: training images of {h}x{w} are too small (at least 4x4)")
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=p["lr"])
        iters = p["iterations"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(iters, 1))))
        for _ in range(iters):
            img = torch.randint(0, n, (p["batch_size"],), generator=gen)
            top = torch.randint(0, h - crop + 1, (p["batch_size"],), generator=gen)
            left = torch.randint(0, w - crop + 1, (p["batch_size"],), generator=gen)
            xb = torch.stack([data.x[i, :, t:t + crop, s:s + crop] for i, t, s in
                              zip(img.tolist(), top.tolist(), left.tolist(), strict=True)])
            yb = torch.stack([data.y[i, :, t:t + crop, s:s + crop] for i, t, s in
                              zip(img.tolist(), top.tolist(), left.tolist(), strict=True)])
            pred = net(xb)
            err = F.mse_loss(pred, yb)
            if p["loss"] == "lab":  # as pixelnet's: squared CIELAB difference / 100^2 beside the RGB term
                flat = (t.permute(0, 2, 3, 1).reshape(-1, 3) for t in (pred, yb))
                err = err + F.mse_loss(*(lab_pixels(t) for t in flat)) / 1e4
            opt.zero_grad()
            err.backward()
            opt.step()
            sched.step()
        self.net = net.eval()
        self.fitted = True
        return self

    @torch.no_grad()
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        dev = next(net.parameters()).device
        x = images.to(dev)
        if isinstance(net, CtxPoolNet):
            return (ctx_pool_cpu(net, x) if dev.type == "cpu" else net(x)).to(images.device)
        _, _, h, w = x.shape
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out = ctx_forward_cpu(net, x) if dev.type == "cpu" else net(x)
        return out[:, :, :h, :w].to(images.device)


#: images per feature chunk of :func:`ctx_pool_cpu` (their 9-plane features stay near the cache)
CTX_POOL_CHUNK = 8


def ctx_pool_cpu(net: CtxPoolNet, x: torch.Tensor, *, chunk: int = CTX_POOL_CHUNK) -> torch.Tensor:
    """``net(x)`` on the CPU, fast: the features (colour and local means) in torch, ``chunk`` images at
    a time, read in place (no concatenation) by the pixel network in the compiled kernel
    (:func:`cellbench.nets.pixel_kernel.apply_pixel_mlp`; torch where it cannot run). Same values as
    ``net(x)`` up to float rounding (tested)."""
    from ..nets.pixel_kernel import apply_pixel_mlp

    layers = [(conv.weight[:, :, 0, 0], conv.bias) for conv in net.convs]
    out = torch.empty(x.shape, dtype=x.dtype)
    for s in range(0, len(x), chunk):
        part = x[s:s + chunk]
        # the features are read in place (no concatenation), the result written into ``out``
        if apply_pixel_mlp(net.feature_list(part), layers, residual=True, out=out[s:s + chunk]) is None:
            out[s:s + chunk] = net(part)
    return out


#: full-resolution rows per step of :func:`ctx_forward_cpu` (even: the context map has half the rows)
CTX_ROWS = 16


def ctx_forward_cpu(net: CtxNet, x: torch.Tensor, *, rows: int = CTX_ROWS, threads: int | None = None) -> torch.Tensor:
    """``net(x)`` on the CPU, fast: the same function, reordered so that little runs at full resolution.

    The head's first 1x1 convolution acts on ``cat[x, up(d1), local]``; it is linear, and nearest
    upsampling commutes with a 1x1 convolution, so ``W [x; up(d1); l] + b = W_x x + up(W_d d1 + b)
    + W_l l``: the context term is projected at half resolution (a quarter of the pixels) and the
    concatenated full-resolution tensor is never built. The full-resolution rest (the local 3x3
    convolution, ``W_x x``, ``W_l l``, the ReLU and the second 1x1 layer) runs on strips of ``rows``
    rows, whose activations stay in cache, as matrix products; images are shared among ``threads``
    Python threads as in :func:`pixel_mlp_cpu`. Same values as ``net(x)`` up to float rounding
    (tested). ``x``: ``(N, 3, H, W)`` with ``H`` and ``W`` divisible by 4.
    """
    n, c, h, w = x.shape
    if h % 4 or w % 4 or rows % 2:
        raise ValueError(f"ctx_forward_cpu: sides must be divisible by 4 (got {h}x{w}) and rows even (got {rows})")
    w1 = net.enc1.out_channels
    e1 = F.relu(net.enc1(F.avg_pool2d(x, 2)))
    e2 = F.relu(net.enc2(F.avg_pool2d(e1, 2)))
    d1 = F.relu(net.dec1(torch.cat([e1, F.interpolate(e2, scale_factor=2.0, mode="nearest")], 1)))
    wh = net.head1.weight[:, :, 0, 0]
    w_x, w_d, w_l = wh[:, :c].contiguous(), wh[:, c:c + w1], wh[:, c + w1:].contiguous()
    ctx = F.conv2d(d1, w_d[:, :, None, None], net.head1.bias)  # (N, head, H/2, W/2)
    heads = ctx.shape[1]
    w2 = net.head2.weight[:, :, 0, 0].contiguous()
    b2 = net.head2.bias[:, None].contiguous()
    local = net.local
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate") if local is not None else None
    out = torch.empty(n, c, h, w, dtype=x.dtype)

    @torch.no_grad()  # grad mode is per thread: the pool's threads start with it on
    def run(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            for r0 in range(0, h, rows):
                r1 = min(r0 + rows, h)
                m = (r1 - r0) * w
                xs = x[i, :, r0:r1].reshape(c, m)
                up = ctx[i, :, r0 // 2:(r1 + 1) // 2, None, :, None].expand(heads, (r1 - r0) // 2, 2, w // 2, 2)
                pre = torch.addmm(up.reshape(heads, m), w_x, xs)
                if local is not None:
                    loc = F.conv2d(xp[i:i + 1, :, r0:r1 + 2], local.weight, local.bias).reshape(-1, m)
                    pre.addmm_(w_l, loc.relu_())
                out[i, :, r0:r1] = torch.addmm(b2, w2, pre.relu_()).add_(xs).reshape(c, r1 - r0, w)

    _run_split(run, n, threads)
    return out


def lut_of(normalizer: Normalizer) -> torch.Tensor:
    """The global table of a fitted ``lut3d`` (for ``.cube`` export); raises for other methods."""
    if not isinstance(normalizer, LUT3DNormalizer):
        raise ConfigError(f"a {normalizer.name!r} model has no 3D LUT to export (export --cube works for lut3d)")
    if normalizer.basis_luts is not None:
        raise ConfigError("an image-adaptive lut3d (basis >= 2) has one table per image; a .cube file holds one: "
                          "distil with basis=0 to export")
    return normalizer.lut.detach().cpu()


def normalizer_from_cube(lut: torch.Tensor, *, interpolation: str = "tetrahedral", title: str = "") -> LUT3DNormalizer:
    """A fitted ``lut3d`` holding ``lut`` ``(3, m, m, m)`` (e.g. from :func:`~cellbench.nets.lut.read_cube`)."""
    norm = LUT3DNormalizer(size=int(lut.shape[-1]), interpolation=interpolation, teacher=title or None)
    norm.lut = lut.float().contiguous()
    norm.fitted = True
    return norm

