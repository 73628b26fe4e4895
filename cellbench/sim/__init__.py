"""Two-system spectral simulator: stained blood-cell scenes rendered through two digital microscopes.

* :mod:`.spectra` absorption spectra of the five absorbers (Beer-Lambert);
* :mod:`.scene` parametric scenes of the eight PBC classes with ground-truth masks;
* :mod:`.system` declarative systems (TOML) and the renderer (optics, camera, ISP, noise);
* :mod:`.pairs` paired datasets in memory, streamed, or on disk;
* :mod:`.synthetic` the embedded simulated dataset (``--data synthetic``) and the ``--data`` loader;
* :mod:`.resim` re-simulation of real images under another system;
* :mod:`.calibrate` comparison of simulated and real colour statistics.
"""

from .pairs import SimulatedPairs, simulate_pair, simulate_pairs, write_paired_dataset
from .scene import Scene, make_scene
from .synthetic import SYNTHETIC_DEFAULTS, load_training_data, synthetic_split, synthetic_splits
from .system import System, builtin_systems, load_system, render

__all__ = [
    "SimulatedPairs",
    "simulate_pair",
    "simulate_pairs",
    "write_paired_dataset",
    "SYNTHETIC_DEFAULTS",
    "load_training_data",
    "synthetic_split",
    "synthetic_splits",
    "Scene",
    "make_scene",
    "System",
    "builtin_systems",
    "load_system",
    "render",
    "resimulate_images",
    "resimulate_folder",
]


def __getattr__(name):  # lazy: resim builds lookup tables on first use
    if name in ("resimulate_images", "resimulate_folder"):
        from . import resim

        return getattr(resim, name)
    raise AttributeError(name)
