"""``hm``: Hedlund-Morell segmentation-based colour transform (US patent 9,672,447).

The paper (sec. 1) describes HM normalization as: *find a representative background colour and
use an affine transform on the entire image to set this background to a predefined value*, then
*segment the image and apply different transformations to different parts*. Here, per image:

1. **Background** (paper sec. 1): ``b_x`` = the background colour
   (:func:`cellbench.segmentation.background_colour`); the image is mapped channel-wise by the
   affine (diagonal) map ``x' = x * b_Y / b_x`` so its background becomes the target system's
   background ``b_Y`` (mean background colour of the Y training images). With
   ``background="image"`` ``b_x`` is estimated per image (as in the paper's normalization);
   with ``background="system"`` (default) it is the mean over X's training images: on the
   simulated pairs the per-image estimate varies with content (crowded fields) and costs accuracy.
2. **Segmentation**: soft memberships ``w_k(p)`` (background, red cell, WBC cytoplasm, WBC
   nucleus; they sum to 1) from a :class:`~cellbench.segmentation.ColourSegmenter` learned on the
   X training images themselves (no ground-truth masks). Memberships are computed on a ~64 px
   copy and upsampled bilinearly, so region borders blend smoothly: no seams.
3. **Per-region affine maps** ``(A_k, b_k)`` (3x4 each), applied as a blend
   ``y(p) = sum_k w_k(p) (A_k f(x'(p)) + b_k)``, with ``f`` the identity (``space="rgb"``) or
   optical density ``-ln(x' / b_Y)`` (``space="od"``; the result is mapped back with
   ``b_Y exp(-.)``).

Fitting:

* ``mode="paired"``: the blend is linear in all 48 parameters, so they are fitted jointly by
  least squares on paired training pixels (seeded sample per image), with a ridge pulling each
  region's map towards the global affine map (regions absent from training fall back to it).
* ``mode="unpaired"`` (the cross-system track, chosen automatically for an
  :class:`~cellbench.data.sets.UnpairedSet`): per region, the weighted mean ``mu`` and covariance
  ``S`` of X's and of Y's training pixels (Y segmented by its own segmenter) are matched by the
  Gaussian optimal-transport (Monge) map
  ``A = S_x^-1/2 (S_x^1/2 S_y S_x^1/2)^1/2 S_x^-1/2``, ``b = mu_y - A mu_x``.
"""

from __future__ import annotations

import logging
from typing import Self

import torch
import torch.nn.functional as F

from ..data.sets import PairedSet, UnpairedSet
from ..errors import CheckpointError, ConfigError
from ..segmentation import REGIONS, ColourSegmenter, background_colour, downsample
from .base import Normalizer, register_normalizer

log = logging.getLogger(__name__)

_EPS = 1e-3
_K = len(REGIONS)
#: A streamed training set (:class:`cellbench.data.stream.LazyImages`) fits the colour segmenters on a
#: seeded sample of at most this many images (0.4 GB as float at 256 px); a set of at most that many
#: is read whole, as in memory (the same fit). The moment passes read every image, a batch at a time.
SEGMENTER_IMAGES = 512


def _segmenter_images(images, seed: int) -> torch.Tensor:
    """``images`` as a tensor for :meth:`ColourSegmenter.fit`: in-memory images as they are; a streamed
    set whole when it has at most :data:`SEGMENTER_IMAGES`, else a seeded sample of that many."""
    if not hasattr(images, "batches"):
        return images
    n = len(images)
    if n <= SEGMENTER_IMAGES:
        return images[:]
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(n, generator=g)[:SEGMENTER_IMAGES].sort().values]


def _sym_sqrt(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    vals = vals.clamp(min=1e-10)
    p = vals.rsqrt() if inverse else vals.sqrt()
    return (vecs * p) @ vecs.T


def gaussian_ot_map(mu_x, cov_x, mu_y, cov_y) -> torch.Tensor:
    """3x4 affine map sending N(mu_x, cov_x) to N(mu_y, cov_y) with least displacement."""
    sx, sx_inv = _sym_sqrt(cov_x), _sym_sqrt(cov_x, inverse=True)
    a = sx_inv @ _sym_sqrt(sx @ cov_y @ sx) @ sx_inv
    b = mu_y - a @ mu_x
    return torch.cat([a, b[:, None]], dim=1)


@register_normalizer
class HMNormalizer(Normalizer):
    """Segmentation-based colour transform with soft region blending (see module docstring).

    Parameters
    ----------
    mode:
        ``"paired"`` (least squares on registered pairs) or ``"unpaired"`` (per-region mean and
        covariance matching). An :class:`UnpairedSet` always gives ``"unpaired"``.
    space:
        ``"rgb"`` or ``"od"`` (optical density relative to the target background).
    pixels_per_image:
        Training pixels sampled (seeded) from each image.
    ridge:
        Weight pulling each region's map towards the global map, relative to the mean diagonal
        of the normal equations per region (paired mode), or added to covariances (unpaired).
    work_size:
        Short side of the downsampled copy used for the background and the segmentation.
    """

    name = "hm"
    description = "Hedlund-Morell: background + per-region affine maps on a learned segmentation, soft-blended"
    data_kinds = ("paired", "unpaired")

    def __init__(self, mode: str = "paired", space: str = "rgb", pixels_per_image: int = 4096,
                 ridge: float = 1e-6, work_size: int = 64, background: str = "system") -> None:
        if background not in ("image", "system"):
            raise ConfigError(f"hm: background must be 'image' or 'system', got {background!r}")
        if mode not in ("paired", "unpaired"):
            raise ConfigError(f"hm: mode must be 'paired' or 'unpaired', got {mode!r}")
        if space not in ("rgb", "od"):
            raise ConfigError(f"hm: space must be 'rgb' or 'od', got {space!r}")
        super().__init__(mode=mode, space=space, pixels_per_image=pixels_per_image, ridge=ridge,
                         work_size=work_size, background=background)
        self.segmenter = ColourSegmenter(work_size=work_size)
        eye = torch.eye(3, 4)
        self.matrices = eye.repeat(_K, 1, 1)  # (K, 3, 4): one affine map per region
        self.target_bg = torch.ones(3)
        self.source_bg = torch.ones(3)

    # -- shared pieces -------------------------------------------------------------------------
    def _prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Background-mapped features ``f(x')`` ``(N, 3, H, W)`` and low-res memberships."""
        small = downsample(images, self.segmenter.work_size)
        bg = background_colour(small, quantile=self.segmenter.bg_quantile)  # (N, 3)
        w = self.segmenter.proba_lowres(images, bg=bg)  # (N, K, h, w)
        tbg = self.target_bg.to(images.device)
        if self.params["background"] == "system":
            bg = self.source_bg.to(images.device).expand_as(bg)
        scale = (tbg / bg)[:, :, None, None]
        x = images * scale  # step 1: background -> target background
        if self.params["space"] == "od":
            x = -torch.log((x / tbg.view(1, 3, 1, 1)).clamp(_EPS, 1.0 / _EPS))
        return x, w

    def _upsample(self, w: torch.Tensor, size) -> torch.Tensor:
        if w.shape[-2:] != tuple(size):
            w = F.interpolate(w, size=size, mode="bilinear", align_corners=False)
        return w

    def _sample(self, feats: torch.Tensor, w: torch.Tensor, g: torch.Generator, *extra: torch.Tensor):
        """Seeded random pixels of each image: features ``(P, 3)``, weights ``(P, K)``, extras."""
        n, _, h, wd = feats.shape
        m = min(self.params["pixels_per_image"], h * wd)
        idx = torch.rand(n, h * wd, generator=g).argsort(1)[:, :m]  # (N, m)
        # bilinear upsampling at the sampled positions = gather from the upsampled map;
        # computing the full map for a batch is cheap enough and keeps fit == transform
        wf = self._upsample(w, (h, wd)).reshape(n, _K, -1)

        def take(t):
            t = t.reshape(n, t.shape[1], -1)
            return t.gather(2, idx[:, None].expand(-1, t.shape[1], -1)).permute(0, 2, 1).reshape(-1, t.shape[1])

        return (take(feats), take(wf), *(take(e) for e in extra))

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, data: PairedSet | UnpairedSet, *, seed: int = 0, batch_size: int = 64) -> Self:
        if isinstance(data, UnpairedSet):
            if self.params["mode"] != "unpaired":
                log.info("hm: unpaired data given; using mode='unpaired'")
                self.params["mode"] = "unpaired"
            x_imgs, y_imgs = data.x.images, data.y.images
        elif isinstance(data, PairedSet):
            x_imgs, y_imgs = data.x, data.y
        else:
            raise ConfigError(f"hm: cannot fit on {type(data).__name__}; pass a PairedSet or UnpairedSet")
        if len(x_imgs) == 0 or len(y_imgs) == 0:
            raise ConfigError("hm: the training split is empty")
        self.segmenter = ColourSegmenter(work_size=self.params["work_size"]).fit(_segmenter_images(x_imgs, seed),
                                                                                  seed=seed)
        bgs = [background_colour(downsample(y_imgs[s:s + batch_size].float(), self.params["work_size"]),
                                 quantile=self.segmenter.bg_quantile) for s in range(0, len(y_imgs), batch_size)]
        self.target_bg = torch.cat(bgs).mean(0).float()
        bgs = [background_colour(downsample(x_imgs[s:s + batch_size].float(), self.params["work_size"]),
                                 quantile=self.segmenter.bg_quantile) for s in range(0, len(x_imgs), batch_size)]
        self.source_bg = torch.cat(bgs).mean(0).float()
        g = torch.Generator().manual_seed(seed)
        if self.params["mode"] == "paired":
            self._fit_paired(x_imgs, y_imgs, g, batch_size)
        else:
            seg_y = ColourSegmenter(work_size=self.params["work_size"]).fit(_segmenter_images(y_imgs, seed + 1),
                                                                            seed=seed + 1)
            self._fit_unpaired(x_imgs, y_imgs, seg_y, g, batch_size)
        self.fitted = True
        return self

    def _target_features(self, y: torch.Tensor) -> torch.Tensor:
        if self.params["space"] == "od":
            return -torch.log((y / self.target_bg.view(1, 3, 1, 1)).clamp(_EPS, 1.0 / _EPS))
        return y

    def _fit_paired(self, x_imgs, y_imgs, g, batch_size) -> None:
        d = 4 * _K
        ata = torch.zeros(d, d, dtype=torch.float64)
        aty = torch.zeros(d, 3, dtype=torch.float64)
        for s in range(0, len(x_imgs), batch_size):
            x = x_imgs[s:s + batch_size].float()
            feats, w = self._prepare(x)
            tgt = self._target_features(y_imgs[s:s + batch_size].float())
            f, wp, yp = self._sample(feats, w, g, tgt)
            f1 = torch.cat([f, torch.ones(len(f), 1)], 1).double()  # (P, 4)
            design = (wp.double()[:, :, None] * f1[:, None, :]).reshape(len(f), d)  # (P, 4K)
            ata += design.T @ design
            aty += design.T @ yp.double()
        # global affine map: the same normal equations with the regions summed (sum_k w_k = 1)
        sm = torch.eye(4, dtype=torch.float64).repeat(_K, 1)  # (4K, 4)
        glob = torch.linalg.lstsq(sm.T @ ata @ sm, sm.T @ aty).solution  # (4, 3)
        # ridge per region, relative to that region's own pixel mass (the weight of its constant
        # feature) so small regions (nucleus) are not flattened; floor for absent regions
        mass = ata.diagonal().reshape(_K, 4)[:, 3]
        lam = self.params["ridge"] * mass.clamp(min=1e-6 * mass.sum().item() + 1e-12)
        reg = torch.diag(lam.repeat_interleave(4))
        theta = torch.linalg.solve(ata + reg, aty + reg @ glob.repeat(_K, 1))  # (4K, 3)
        self.matrices = theta.reshape(_K, 4, 3).permute(0, 2, 1).float().contiguous()  # (K, 3, 4)

    def _moments(self, imgs, seg: ColourSegmenter, g, batch_size, prepare):
        sw = torch.zeros(_K, dtype=torch.float64)
        s1 = torch.zeros(_K, 3, dtype=torch.float64)
        s2 = torch.zeros(_K, 3, 3, dtype=torch.float64)
        for s in range(0, len(imgs), batch_size):
            feats, w = prepare(imgs[s:s + batch_size].float(), seg)
            f, wp = self._sample(feats, w, g)
            f, wp = f.double(), wp.double()
            sw += wp.sum(0)
            s1 += wp.T @ f
            s2 += torch.einsum("pk,pi,pj->kij", wp, f, f)
        return sw, s1, s2

    def _fit_unpaired(self, x_imgs, y_imgs, seg_y, g, batch_size) -> None:
        def prep_x(x, seg):
            return self._prepare(x)

        def prep_y(y, seg):
            small = downsample(y, seg.work_size)
            bg = background_colour(small, quantile=seg.bg_quantile)
            return self._target_features(y), seg.proba_lowres(y, bg=bg)

        mx = self._moments(x_imgs, self.segmenter, g, batch_size, prep_x)
        my = self._moments(y_imgs, seg_y, g, batch_size, prep_y)

        def stats(m, k=None):
            sw, s1, s2 = m
            if k is None:
                sw, s1, s2 = sw.sum(), s1.sum(0), s2.sum(0)
            else:
                sw, s1, s2 = sw[k], s1[k], s2[k]
            mu = s1 / sw.clamp(min=1e-12)
            cov = s2 / sw.clamp(min=1e-12) - torch.outer(mu, mu)
            return sw.item(), mu, cov

        eps = self.params["ridge"] * 1e-2 * torch.eye(3, dtype=torch.float64)
        _, gmx, gcx = stats(mx)
        _, gmy, gcy = stats(my)
        glob = gaussian_ot_map(gmx, gcx + eps, gmy, gcy + eps)
        mats = []
        for k in range(_K):
            nx, mux, cx = stats(mx, k)
            ny, muy, cy = stats(my, k)
            if nx < 50 or ny < 50:  # region absent from one system's training images
                log.warning("hm: region %d has too few training pixels; using the global map", REGIONS[k])
                mats.append(glob)
            else:
                mats.append(gaussian_ot_map(mux, cx + eps, muy, cy + eps))
        self.matrices = torch.stack(mats).float().contiguous()

    # -- transform -----------------------------------------------------------------------------
    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, wd = images.shape
        small = downsample(images, self.segmenter.work_size)
        bg = background_colour(small, quantile=self.segmenter.bg_quantile)  # (N, 3)
        w = self.segmenter.proba_lowres(small, bg=bg)  # (N, K, h, w) soft memberships
        tbg = self.target_bg.to(images.device)
        if self.params["background"] == "system":
            bg = self.source_bg.to(images.device).expand_as(bg)
        m = self.matrices.to(images.device)  # (K, 3, 4)
        # blend the per-region maps on the coarse grid, then upsample the 12-channel map field:
        # bilinear interpolation is linear, so this equals blending upsampled memberships
        field = torch.einsum("nkhw,kij->nijhw", w, m)  # (N, 3, 4, h, w)
        if self.params["space"] == "rgb":
            # fold step 1 (x' = x * b_Y / b_x) into the linear part: A diag(s) x + b
            s = (tbg / bg)[:, None, :, None, None]
            field = torch.cat([field[:, :, :3] * s, field[:, :, 3:]], dim=2)
            feats = images
        else:
            feats = -torch.log((images / bg[:, :, None, None]).clamp(_EPS, 1.0 / _EPS))
        field = field.reshape(n, 12, *field.shape[-2:])
        if field.shape[-2:] != (h, wd):
            field = F.interpolate(field, size=(h, wd), mode="bilinear", align_corners=False)
        field = field.view(n, 3, 4, h, wd)
        out = torch.addcmul(field[:, :, 3], field[:, :, 0], feats[:, 0:1])
        out.addcmul_(field[:, :, 1], feats[:, 1:2]).addcmul_(field[:, :, 2], feats[:, 2:3])
        if self.params["space"] == "od":
            out = tbg.view(1, 3, 1, 1) * torch.exp(-out.clamp(min=-1.0))
        return out

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Hard region labels ``uint8 (N, H, W)`` the transform blends over."""
        return self.segmenter.predict(images)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"matrices": self.matrices, "target_bg": self.target_bg, "source_bg": self.source_bg}
        state.update({f"seg.{k}": v for k, v in self.segmenter.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        try:
            self.matrices = state["matrices"].float()
            self.target_bg = state["target_bg"].float()
            self.source_bg = state["source_bg"].float()
        except KeyError as exc:
            raise CheckpointError(f"hm: saved state lacks {exc}; re-fit the model") from None
        self.segmenter.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("seg.")})

    def to(self, device) -> Self:
        self.matrices = self.matrices.to(device)
        self.target_bg = self.target_bg.to(device)
        self.source_bg = self.source_bg.to(device)
        return self
