"""Imaging systems as declarative data: illuminant, filters, objective, camera, image processing.

A system file is TOML (copy a built-in from ``cellbench/sim/systems/`` and edit it). It is read by
:func:`load_system`; any bad or unknown field raises :class:`~cellbench.errors.ConfigError` naming
the file and the field. :func:`render` turns absorber amounts into an 8-bit image:

1. Depth layers are blurred by the geometric defocus of the objective (layer depth minus focus),
   ``sigma = 0.5 * |z - z_focus| * tan(asin(NA / n)) / pixel`` (a Gaussian stand-in for the
   defocused pupil), then summed.
2. Beer-Lambert transmission per wavelength, eq. (1) of :mod:`cellbench.sim.spectra`, integrated
   against ``illuminant * filters * camera sensitivity`` (a ``(L, 3)`` response matrix computed
   once): ``raw_c = sum_l R_lc 10^(-sum_k c_k eps_k(l))``.  This is a ``(P,5)@(5,L)``, an exp and a
   ``(P,L)@(L,3)``: no per-wavelength loop over pixels.
3. Diffraction PSF per colour channel (Gaussian approximation of the Airy disc,
   ``sigma = 0.21 lambda_c / NA``, ``lambda_c`` the channel's mean wavelength) and lateral chromatic
   aberration (a per-channel magnification about the image centre); the pair misregistration
   (shift + rotation) is applied in the same resampling.
4. Poisson-Gaussian sensor noise (shot noise in electrons of the full well, read noise).
5. Image signal processing: white balance on the (absorber-free) background, 3x3 colour matrix
   with saturation, optional local (density-dependent) hue/chroma enhancement, per-channel gain
   to the system's output background colour, tone curve (gamma + S-shaped contrast), unsharp-mask
   sharpening, optional JPEG, 8-bit quantization.

The inverse of step 5 (except its spatial steps and JPEG) is :meth:`System.linearize`, used by the
re-simulation (:mod:`cellbench.sim.resim`).
"""

from __future__ import annotations

import io
import math
import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError
from .spectra import WAVELENGTHS, absorption_matrix

__all__ = ["System", "load_system", "builtin_systems", "render", "Warp"]

LN10 = math.log(10.0)
_LUMA = np.array([0.2126, 0.7152, 0.0722])


def builtin_systems() -> list[str]:
    """Names of the systems shipped in ``cellbench/sim/systems/*.toml``."""
    root = resources.files("cellbench.sim") / "systems"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


# ----------------------------------------------------------------------------------------------
# reading and validating a system file


class _Fields:
    """Typed access to one TOML table; every problem names the file and the dotted field."""

    def __init__(self, table: dict, source: str, prefix: str) -> None:
        self.table, self.source, self.prefix, self.used = table, source, prefix, set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{self._name(key)}' {msg}; fix the system file")

    def get(self, key: str, default=None):
        self.used.add(key)
        return self.table.get(key, default)

    def number(
        self, key: str, default: float | None = None, lo: float | None = None, hi: float | None = None
    ) -> float:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, "is required (a number)")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.fail(key, f"must be a number, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(key, f"must lie in [{lo}, {hi}], got {v!r}")
        return float(v)

    def vector(
        self,
        key: str,
        n: int,
        default=None,
        lo: float | None = None,
        hi: float | None = None,
    ) -> np.ndarray:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, f"is required (a list of {n} numbers)")
        if (
            not isinstance(v, list)
            or len(v) != n
            or not all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a) for a in v)
        ):
            raise self.fail(key, f"must be a list of {n} numbers, got {v!r}")
        a = np.array(v, dtype=np.float64)
        if (lo is not None and (a < lo).any()) or (hi is not None and (a > hi).any()):
            raise self.fail(key, f"values must lie in [{lo}, {hi}], got {v!r}")
        return a

    def string(self, key: str, default: str | None = None, choices: list[str] | None = None) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            raise self.fail(key, f"must be a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.fail(key, f"must be one of {choices}, got {v!r}")
        return v

    def sub(self, key: str, required: bool = True) -> _Fields:
        v = self.get(key)
        if v is None and not required:
            v = {}
        if not isinstance(v, dict):
            raise self.fail(
                key, "must be a table ([section])" if v is not None else "is required (a [section])"
            )
        return _Fields(v, self.source, self._name(key))

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"is unknown (known fields here: {', '.join(sorted(self.used))})")


def _interp(wl: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.interp(WAVELENGTHS, wl, values, left=0.0, right=0.0)


def _blackbody(wl_nm: np.ndarray, temp_k: float) -> np.ndarray:
    lam = wl_nm * 1e-9
    b = 1.0 / (lam**5 * (np.exp(1.4388e-2 / (lam * temp_k)) - 1.0))
    return b / b.max()


def _read_illuminant(f: _Fields) -> np.ndarray:
    import colour

    name = f.get("name")
    temp = f.get("blackbody_k")
    if (name is None) == (temp is None):
        raise f.fail("name", "or 'blackbody_k' must be given (exactly one)")
    if name is not None:
        if not isinstance(name, str) or name not in colour.SDS_ILLUMINANTS:
            known = [k for k in colour.SDS_ILLUMINANTS if k == "A" or k.startswith(("LED", "FL", "D"))]
            raise f.fail(
                "name", f"must name a colour-science illuminant (e.g. {', '.join(known[:14])}), got {name!r}"
            )
        sd = colour.SDS_ILLUMINANTS[name]
        spec = _interp(sd.wavelengths, sd.values)
    else:
        spec = _blackbody(WAVELENGTHS, f.number("blackbody_k", lo=1000, hi=20000))
    f.finish()
    return spec / spec.max()


def _read_filter(f: _Fields) -> np.ndarray:
    kind = f.string("kind", choices=["shortpass", "longpass", "bandpass", "conversion", "neutral"])
    wl = WAVELENGTHS
    if kind in ("shortpass", "longpass"):
        cut, width = f.number("cutoff_nm", lo=300, hi=1000), f.number("width_nm", 10.0, lo=0.5, hi=200)
        s = 1.0 / (1.0 + np.exp((wl - cut) / (width / 4.0)))
        t = s if kind == "shortpass" else 1.0 - s
    elif kind == "bandpass":
        c, fwhm = f.number("centre_nm", lo=300, hi=1000), f.number("fwhm_nm", lo=1, hi=1000)
        t = np.exp(-0.5 * ((wl - c) / (fwhm / 2.3548)) ** 2)
    elif kind == "conversion":  # colour-temperature conversion (e.g. a blue "daylight" filter)
        t = _blackbody(wl, f.number("to_k", lo=1000, hi=20000)) / _blackbody(
            wl, f.number("from_k", lo=1000, hi=20000)
        )
        t = t / t.max()
    else:
        t = np.full_like(wl, 1.0)
    peak = f.number("peak", 1.0, lo=0.0, hi=1.0)
    f.finish()
    return t * peak


def _read_camera(f: _Fields) -> np.ndarray:
    import colour

    name = f.get("sensitivities")
    if name is not None:
        if not isinstance(name, str) or name not in colour.MSDS_CAMERA_SENSITIVITIES:
            raise f.fail(
                "sensitivities",
                f"must be one of {sorted(colour.MSDS_CAMERA_SENSITIVITIES)} "
                f"(colour-science camera data), got {name!r}",
            )
        ms = colour.MSDS_CAMERA_SENSITIVITIES[name]
        sens = np.stack([_interp(ms.wavelengths, ms.values[:, c]) for c in range(3)], axis=1)
        for k in ("peaks_nm", "widths_nm"):
            if k in f.table:
                raise f.fail(k, "cannot be combined with 'sensitivities' (give one or the other)")
    else:
        peaks = f.vector("peaks_nm", 3, lo=350, hi=800)
        widths = f.vector("widths_nm", 3, lo=5, hi=300)
        sens = np.exp(-0.5 * ((WAVELENGTHS[:, None] - peaks) / widths) ** 2)
    return sens


@dataclass
class System:
    """One imaging system (see the module docstring for the model). Build with :func:`load_system`."""

    name: str
    source: str
    description: str
    illuminant: np.ndarray  # (L,) relative power
    filters: np.ndarray  # (L,) product of filter transmittances
    sensitivities: np.ndarray  # (L, 3) camera spectral sensitivities (R, G, B)
    na: float
    immersion_index: float
    focus_um: float
    pixel_um: float
    psf_scale: float
    chromatic_aberration: np.ndarray  # (3,) relative magnification error per channel
    full_well: float
    read_noise: float
    exposure: float
    color_matrix: np.ndarray  # (3, 3), rows sum to 1
    saturation: float
    background_rgb: np.ndarray  # (3,) output colour of an absorber-free pixel, in [0, 1]
    gamma: float
    contrast: float
    sharpen_amount: float
    sharpen_sigma_px: float
    jpeg_quality: int
    local_sigma_px: float = 0.0
    local_threshold_od: float = 0.4
    local_softness_od: float = 0.08
    local_hue_deg: float = 0.0
    local_saturation: float = 1.0
    extra: dict = field(default_factory=dict)

    # -- spectral part ---------------------------------------------------------------------------
    @cached_property
    def response(self) -> np.ndarray:
        """``(L, 3)`` float32 channel response, scaled so the background's brightest raw channel
        equals ``exposure`` (fraction of the full well)."""
        r = (self.illuminant * self.filters)[:, None] * self.sensitivities
        return (r / r.sum(axis=0).max() * self.exposure).astype(np.float32)

    @cached_property
    def raw_background(self) -> np.ndarray:
        """``(3,)`` raw signal of an absorber-free pixel (fraction of full well)."""
        return self.response.astype(np.float64).sum(axis=0)

    @cached_property
    def eps(self) -> np.ndarray:
        return absorption_matrix().astype(np.float32)  # (5, L)

    @cached_property
    def channel_wavelengths(self) -> np.ndarray:
        r = self.response.astype(np.float64)
        return (WAVELENGTHS[:, None] * r).sum(0) / r.sum(0)

    @cached_property
    def _active(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Absorption and response restricted to wavelengths where the system responds at all."""
        keep = self.response.max(axis=1) > 1e-4 * self.response.max()
        eps = torch.from_numpy(np.ascontiguousarray(self.eps[:, keep] * -LN10))
        return eps, torch.from_numpy(np.ascontiguousarray(self.response[keep].T))

    def raw(self, conc: np.ndarray) -> np.ndarray:
        """Noise-free raw signal ``(3, P)`` float32 of concentrations ``(5, P)`` (eq. 1 integrated)."""
        eps, resp = self._active
        od = eps.T @ torch.from_numpy(np.ascontiguousarray(conc, dtype=np.float32))  # (L, P)
        return (resp @ od.exp_()).numpy()

    # -- image processing --------------------------------------------------------------------------
    @cached_property
    def _matrix(self) -> np.ndarray:
        s = self.saturation
        sat = s * np.eye(3) + (1.0 - s) * np.outer(np.ones(3), _LUMA)
        return sat @ self.color_matrix

    @cached_property
    def _gain(self) -> np.ndarray:
        return self.tone_inverse(self.background_rgb)

    def tone(self, x: np.ndarray) -> np.ndarray:
        """Tone curve on [0, 1]: gamma, then an S-curve blend ``y + contrast (3y^2 - 2y^3 - y)``."""
        y = np.power(np.clip(x, 0.0, 1.0), 1.0 / self.gamma)
        return y + self.contrast * (y * y * (3.0 - 2.0 * y) - y)

    @cached_property
    def _tone_table(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.linspace(0.0, 1.0, 16385) ** 2  # dense near black where the curve is steep
        return x, self.tone(x)

    def tone_inverse(self, y: np.ndarray) -> np.ndarray:
        x, t = self._tone_table
        return np.interp(np.asarray(y, dtype=np.float64), t, x)

    @cached_property
    def _local_matrix(self) -> np.ndarray:
        """Hue rotation by ``local_hue_deg`` about the grey axis, chroma scaled by ``local_saturation``."""
        th = math.radians(self.local_hue_deg)
        k = np.ones(3) / math.sqrt(3.0)
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        rot = np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * kx @ kx
        grey = np.outer(k, k)
        return grey + self.local_saturation * rot @ (np.eye(3) - grey)

    def process(self, raw: np.ndarray, *, sharpen: bool = True, local: bool = True) -> np.ndarray:
        """ISP: raw ``(3, H, W)`` (fraction of full well) -> display RGB ``(H, W, 3)`` float in [0, 1].

        With ``local_sigma_px > 0`` the ISP also applies a *local* (neighbourhood-dependent) colour
        enhancement, as digital-morphology software does for nuclei (the paper, sec. 1: contrast
        and hue adjustments "especially in the nucleus"): where the optical density averaged over a
        Gaussian neighbourhood (``local_sigma_px``) exceeds ``local_threshold_od`` (logistic,
        width ``local_softness_od``), colours are rotated in hue by ``local_hue_deg`` about the grey
        axis and their chroma scaled by ``local_saturation``. The same colour is thus processed
        differently inside and outside dense regions: no global colour map can undo it.
        """
        wb = raw / self.raw_background.astype(np.float32)[:, None, None]
        lin = np.einsum("ij,jhw->ihw", self._matrix.astype(np.float32), wb)
        if local and self.local_sigma_px > 0 and (self.local_hue_deg != 0 or self.local_saturation != 1):
            od = -np.log10(np.clip(wb.mean(axis=0), 1e-3, None))
            od = ndimage.gaussian_filter(od, self.local_sigma_px, mode="nearest", truncate=3.0)
            wgt = 1.0 / (1.0 + np.exp(-(od - self.local_threshold_od) / self.local_softness_od))
            enh = np.einsum("ij,jhw->ihw", self._local_matrix.astype(np.float32), lin)
            lin += wgt.astype(np.float32)[None] * (enh - lin)
        lin *= self._gain.astype(np.float32)[:, None, None]
        out = self.tone(lin).astype(np.float32)
        if sharpen and self.sharpen_amount > 0:
            for c in range(3):
                blur = ndimage.gaussian_filter(out[c], self.sharpen_sigma_px, mode="nearest", truncate=3.0)
                out[c] += self.sharpen_amount * (out[c] - blur)
        return np.clip(out.transpose(1, 2, 0), 0.0, 1.0)

    def linearize(self, rgb: np.ndarray) -> np.ndarray:
        """Invert the ISP (tone curve, gain, colour matrix, white balance; not sharpening or JPEG).

        Parameters
        ----------
        rgb:
            Display RGB ``(..., 3)`` in [0, 1].

        Returns
        -------
        ndarray
            Raw signal ``(..., 3)`` relative to the background (1 = absorber-free), float64.
        """
        lin = self.tone_inverse(rgb)
        m = self._matrix * self._gain[:, None]
        return lin @ np.linalg.inv(m).T

    # -- optics ------------------------------------------------------------------------------------
    def defocus_sigma_px(self, depth_um: float) -> float:
        """Gaussian sigma (px) of the geometric defocus blur of a layer at ``depth_um``."""
        sin_t = min(self.na / self.immersion_index, 0.99)
        radius = abs(depth_um - self.focus_um) * math.tan(math.asin(sin_t))
        return 0.5 * radius / self.pixel_um * self.psf_scale

    @cached_property
    def psf_sigma_px(self) -> np.ndarray:
        """``(3,)`` diffraction PSF sigma per channel in px (0.21 lambda / NA)."""
        return 0.21 * self.channel_wavelengths * 1e-3 / self.na / self.pixel_um * self.psf_scale


def _system_from_table(data: dict, source: str) -> System:
    root = _Fields(data, source, "")
    name = root.string("name")
    description = root.string("description", "")
    ill = _read_illuminant(root.sub("illuminant"))
    filt = np.ones_like(WAVELENGTHS)
    filters = root.get("filters", [])
    if not isinstance(filters, list):
        raise root.fail("filters", "must be an array of tables ([[filters]])")
    for i, tab in enumerate(filters):
        if not isinstance(tab, dict):
            raise root.fail(f"filters[{i}]", "must be a table")
        filt = filt * _read_filter(_Fields(tab, source, f"filters[{i}]"))
    obj = root.sub("objective")
    na = obj.number("na", lo=0.05, hi=1.5)
    n_imm = obj.number("immersion_index", 1.515, lo=1.0, hi=2.0)
    if na >= n_imm:
        raise obj.fail("na", f"must be below immersion_index ({n_imm})")
    optics = dict(
        na=na,
        immersion_index=n_imm,
        focus_um=obj.number("focus_um", 0.0, lo=-10, hi=10),
        pixel_um=obj.number("pixel_um", 0.1, lo=0.01, hi=10),
        psf_scale=obj.number("psf_scale", 1.0, lo=0.0, hi=10),
        chromatic_aberration=obj.vector("chromatic_aberration", 3, [0.0, 0.0, 0.0], lo=-0.05, hi=0.05),
    )
    obj.finish()
    cam = root.sub("camera")
    sens = _read_camera(cam)
    camera = dict(
        full_well=cam.number("full_well", 10000.0, lo=1.0, hi=1e7),
        read_noise=cam.number("read_noise", 5.0, lo=0.0, hi=1e4),
        exposure=cam.number("exposure", 0.8, lo=0.01, hi=1.0),
    )
    cam.finish()
    isp = root.sub("isp")
    cm = isp.get("color_matrix", [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    try:
        cm = np.array(cm, dtype=np.float64)
        ok = cm.shape == (3, 3) and np.isfinite(cm).all()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise isp.fail("color_matrix", "must be a 3x3 list of numbers")
    rows = cm.sum(axis=1)
    if (np.abs(rows) < 1e-6).any():
        raise isp.fail("color_matrix", "rows must not sum to 0 (they are rescaled to sum to 1)")
    cm = cm / rows[:, None]
    if abs(np.linalg.det(cm)) < 1e-6:
        raise isp.fail("color_matrix", "must be invertible")
    proc = dict(
        color_matrix=cm,
        saturation=isp.number("saturation", 1.0, lo=0.0, hi=3.0),
        background_rgb=isp.vector("background_rgb", 3, [0.94, 0.94, 0.94], lo=0.05, hi=1.0),
        gamma=isp.number("gamma", 2.2, lo=0.2, hi=5.0),
        contrast=isp.number("contrast", 0.0, lo=0.0, hi=1.0),
        sharpen_amount=isp.number("sharpen_amount", 0.0, lo=0.0, hi=5.0),
        sharpen_sigma_px=isp.number("sharpen_sigma_px", 1.0, lo=0.1, hi=20.0),
        jpeg_quality=int(isp.number("jpeg_quality", 0, lo=0, hi=100)),
        local_sigma_px=isp.number("local_sigma_px", 0.0, lo=0.0, hi=100.0),
        local_threshold_od=isp.number("local_threshold_od", 0.4, lo=0.0, hi=5.0),
        local_softness_od=isp.number("local_softness_od", 0.08, lo=1e-3, hi=5.0),
        local_hue_deg=isp.number("local_hue_deg", 0.0, lo=-180.0, hi=180.0),
        local_saturation=isp.number("local_saturation", 1.0, lo=0.0, hi=3.0),
    )
    isp.finish()
    root.finish()
    return System(
        name=name,
        source=source,
        description=description,
        illuminant=ill,
        filters=filt,
        sensitivities=sens,
        **optics,
        **camera,
        **proc,
    )


def load_system(spec: str | os.PathLike | System) -> System:
    """A built-in system by name (``"dm1200-like"``, ``"dm96-like"``) or a TOML file path.

    Raises
    ------
    ConfigError
        Unknown name, unreadable file, invalid TOML, or a bad field (the message names it).
    """
    if isinstance(spec, System):
        return spec
    s = str(spec)
    if s in builtin_systems():
        return _load_builtin(s)
    path = Path(s)
    if not path.suffix.lower() == ".toml" and not path.exists():
        raise ConfigError(f"unknown system {s!r}: use one of {builtin_systems()} or a path to a .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read system file ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the system file") from None
    return _system_from_table(data, str(path))


_BUILTIN_CACHE: dict[str, System] = {}


def _load_builtin(name: str) -> System:
    if name not in _BUILTIN_CACHE:
        res = resources.files("cellbench.sim") / "systems" / f"{name}.toml"
        _BUILTIN_CACHE[name] = _system_from_table(
            tomllib.loads(res.read_text(encoding="utf-8")), f"<built-in {name}>"
        )
    return _BUILTIN_CACHE[name]


# ----------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class Warp:
    """Rigid sub-pixel misregistration: shift ``(dy, dx)`` in px and rotation in degrees about the centre."""

    dy: float = 0.0
    dx: float = 0.0
    rotation_deg: float = 0.0

    @staticmethod
    def random(rng: np.random.Generator, max_shift_px: float, max_rotation_deg: float) -> Warp:
        r = max_shift_px * math.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * math.pi)
        return Warp(r * math.sin(a), r * math.cos(a), rng.uniform(-1, 1) * max_rotation_deg)


def _resample(img: np.ndarray, scales: np.ndarray, warp: Warp | None) -> np.ndarray:
    """Bilinear resampling of ``(3, H, W)``: channel c at p reads ``centre + R(s_c (p - centre)) - shift``.

    ``s_c`` models lateral chromatic aberration (per-channel magnification), ``R`` and ``shift`` the
    misregistration; borders are extended.
    """
    c3, h, w = img.shape
    th = math.radians(warp.rotation_deg) if warp else 0.0
    dy, dx = (warp.dy, warp.dx) if warp else (0.0, 0.0)
    cos, sin = math.cos(th), math.sin(th)
    ry, rx = (h - 1) / max(w - 1, 1), (w - 1) / max(h - 1, 1)
    theta = torch.tensor(
        [
            [
                [sc * cos, sc * sin * ry, -2 * dx / max(w - 1, 1)],
                [-sc * sin * rx, sc * cos, -2 * dy / max(h - 1, 1)],
            ]
            for sc in map(float, scales)
        ],
        dtype=torch.float32,
    )
    grid = torch.nn.functional.affine_grid(theta, [c3, 1, h, w], align_corners=True)
    out = torch.nn.functional.grid_sample(
        torch.from_numpy(np.ascontiguousarray(img))[:, None],
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return out[:, 0].numpy()


def _jpeg(rgb8: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb8, "RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=3.0) if sigma >= 0.3 else a


def render(
    system: System,
    layers,
    depths_um,
    *,
    rng: np.random.Generator | None = None,
    warp: Warp | None = None,
    optics: bool = True,
    sharpen: bool = True,
    quantize: bool = True,
) -> np.ndarray:
    """Render absorber amounts through ``system``.

    Parameters
    ----------
    layers:
        ``(Z, 5, H, W)`` float32 absorber amounts (OD units at each absorber's peak) per depth layer,
        or a list of per-layer parts, each dense ``(5, H, W)`` or factored ``(stain (5,), map (H, W))``
        (:attr:`cellbench.sim.scene.Scene.parts`).
    depths_um:
        ``(Z,)`` depth of each layer in um (the focus of the system is ``system.focus_um``).
    rng:
        Noise generator; ``None`` renders without noise.
    warp:
        Misregistration applied to the specimen (for the second image of a pair).
    optics:
        Apply defocus, PSF and chromatic aberration (False: an ideal pinhole, used by resim).
    sharpen:
        Apply the ISP's spatial steps (sharpening and local enhancement); resim turns them off.
    quantize:
        Return ``uint8`` (after the optional JPEG); otherwise float32 in [0, 1].

    Returns
    -------
    ndarray
        ``(H, W, 3)`` image, ``uint8`` or float32 in [0, 1].
    """
    parts = list(layers)
    first = parts[0] if isinstance(parts[0], np.ndarray) else parts[0][1]
    h, w = first.shape[-2:]
    k = 5
    conc = np.zeros((k, h, w), dtype=np.float32)
    for li, part in enumerate(parts):
        sigma = system.defocus_sigma_px(float(depths_um[li])) if optics else 0.0
        if isinstance(part, np.ndarray):  # dense (5, H, W)
            for a in range(k):
                if part[a].any():
                    conc[a] += _blur(part[a].astype(np.float32, copy=False), sigma)
        else:  # factored (stain (5,), map (H, W)): blur the map once
            vec, amap = np.asarray(part[0], np.float32), np.asarray(part[1], np.float32)
            if vec.any() and amap.any():
                conc += vec[:, None, None] * _blur(amap, sigma)[None]
    raw = system.raw(conc.reshape(k, -1)).reshape(3, h, w)
    if optics:
        raw = np.stack(
            [
                ndimage.gaussian_filter(raw[c], float(system.psf_sigma_px[c]), mode="nearest", truncate=3.0)
                if system.psf_sigma_px[c] >= 0.3
                else raw[c]
                for c in range(3)
            ]
        )
    scales = 1.0 + (system.chromatic_aberration if optics else np.zeros(3))
    if warp is not None or (scales != 1.0).any():
        raw = _resample(raw, 1.0 / scales, warp)
    if rng is not None:
        e = raw * np.float32(system.full_well)
        e += rng.standard_normal(e.shape, dtype=np.float32) * np.sqrt(
            np.maximum(e, 0) + np.float32(system.read_noise**2)
        )
        raw = e / np.float32(system.full_well)
    img = system.process(raw, sharpen=sharpen, local=sharpen)
    if not quantize:
        return img
    img8 = np.round(img * 255.0).astype(np.uint8)
    if system.jpeg_quality > 0:
        img8 = _jpeg(img8, system.jpeg_quality)
    return img8
