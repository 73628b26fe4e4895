"""Absorption spectra of the five Romanowsky-Giemsa absorbers, as documented Gaussian mixtures.

Every absorber ``k`` has a specific absorbance spectrum ``eps_k(lambda)`` (optical density per unit
concentration-times-thickness), normalised so that its main visible peak is 1. A pixel holding
concentrations ``c_k`` transmits, by the Beer-Lambert law,

    T(lambda) = 10 ** (-sum_k c_k * eps_k(lambda))                                        (1)

The shapes are approximations built from the peak positions and relative heights reported in the
literature (cited per absorber below); they are not measured spectra. The wavelength grid is
380-780 nm in 10 nm steps (41 samples), which is fine enough for bands 15-40 nm wide.

References
----------
.. [Horobin1987] Horobin R.W., Walter K.J. (1987) Understanding Romanowsky staining I: the
   Romanowsky-Giemsa effect in blood smears. Histochemistry 86:331-336.
.. [Wittekind1983] Wittekind D.H. (1983) On the nature of Romanowsky dyes and the
   Romanowsky-Giemsa effect. Clin. Lab. Haematol. 1:247-262 (azure B-eosin complex, ~550 nm).
.. [Marshall1978] Marshall P.N. (1978) Romanowsky-type stains in haemotology. Histochem. J.
   10:1-29 (azure B ~648 nm; methylene blue 664 nm).
.. [Bergmann1963] Bergmann K., O'Konski C.T. (1963) A spectroscopic study of methylene blue
   monomer, dimer and complexes with montmorillonite. J. Phys. Chem. 67:2169-2177 (664 nm monomer,
   ~612 nm dimer shoulder).
.. [Conn2002] Horobin R.W., Kiernan J.A. (eds.) (2002) Conn's Biological Stains, 10th ed.
   (eosin Y: lambda_max 515-518 nm free, ~525 nm bound; shoulder ~490 nm).
.. [Prahl1999] Prahl S. (1999) Optical absorption of hemoglobin. Oregon Medical Laser Center,
   https://omlc.org/spectra/hemoglobin/ (HbO2: Soret 415 nm, eps 524280 /cm/M; Q bands 542 nm,
   53236 and 577 nm, 55540).
"""

from __future__ import annotations

import numpy as np

#: Wavelength grid in nm, shape ``(L,)``.
WAVELENGTHS = np.arange(380.0, 781.0, 10.0)

#: Absorber order used for every concentration array ``(..., 5)`` or ``(5, ...)``.
ABSORBERS: tuple[str, ...] = ("eosin", "methylene_blue", "azure_b", "azure_eosin", "haemoglobin")
EOSIN, METHYLENE_BLUE, AZURE_B, AZURE_EOSIN, HAEMOGLOBIN = range(5)

# (centre nm, sigma nm, relative height) per band; main peak height 1.
_BANDS: dict[str, list[tuple[float, float, float]]] = {
    # Eosin Y bound to protein: main band ~525 nm, vibronic shoulder ~490 nm [Conn2002].
    "eosin": [(525.0, 16.0, 1.0), (492.0, 18.0, 0.32)],
    # Methylene blue: monomer 664 nm, dimer/vibronic shoulder 612 nm; weak UV-side tail [Bergmann1963].
    "methylene_blue": [(664.0, 17.0, 1.0), (612.0, 22.0, 0.45), (400.0, 25.0, 0.05)],
    # Azure B: monomer ~648 nm, dimer ~595 nm [Marshall1978].
    "azure_b": [(648.0, 20.0, 1.0), (596.0, 24.0, 0.55)],
    # Azure B-eosin complex (the purple of chromatin, the Romanowsky-Giemsa effect): a broad
    # band ~550 nm [Wittekind1983, Horobin1987]; it absorbs green-yellow, so it looks purple.
    "azure_eosin": [(546.0, 28.0, 1.0), (600.0, 28.0, 0.4), (500.0, 25.0, 0.2)],
    # Oxy-haemoglobin: Soret 415 nm about 9.5x the Q bands at 542 and 577 nm [Prahl1999].
    "haemoglobin": [(415.0, 11.0, 9.5), (542.0, 10.0, 0.96), (577.0, 7.5, 1.0), (470.0, 40.0, 0.25)],
}


def gaussian_mixture(wavelengths: np.ndarray, bands: list[tuple[float, float, float]]) -> np.ndarray:
    """Sum of Gaussians ``sum_b h_b exp(-(l - c_b)^2 / (2 s_b^2))`` on ``wavelengths`` (nm)."""
    wl = np.asarray(wavelengths, dtype=np.float64)[:, None]
    c, s, h = (np.array(v, dtype=np.float64) for v in zip(*bands, strict=True))
    return (h * np.exp(-0.5 * ((wl - c) / s) ** 2)).sum(axis=1)


def absorption_matrix(wavelengths: np.ndarray = WAVELENGTHS) -> np.ndarray:
    """Specific absorbance ``eps`` of the five absorbers, shape ``(5, L)`` (OD per unit amount).

    Each row is normalised so that its maximum over 450-700 nm is 1 (haemoglobin: the 577 nm Q
    band is 1 and the Soret band ~9.5).
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    probe = np.arange(450.0, 701.0, 1.0)
    rows = []
    for name in ABSORBERS:
        spec = gaussian_mixture(wl, _BANDS[name])
        rows.append(spec / gaussian_mixture(probe, _BANDS[name]).max())
    return np.stack(rows)


def peak_wavelength(name: str, lo: float = 450.0, hi: float = 700.0) -> float:
    """Wavelength (nm, 1 nm resolution) of an absorber's maximum within ``[lo, hi]``."""
    probe = np.arange(lo, hi + 1.0, 1.0)
    return float(probe[np.argmax(gaussian_mixture(probe, _BANDS[name]))])
