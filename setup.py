"""Build hook: ship the presets of the top-level ``models/`` inside the package.

``models/*.toml`` is the one copy in git, where users edit presets; a wheel gets a copy in
``cellbench/_presets/`` made here at build time, so an installed ``cellbench`` finds them
(:func:`cellbench.presets.models_dir`). Everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithPresets(build_py):
    """``build_py`` that also copies ``models/*.toml`` to ``<build>/cellbench/_presets/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's models/ itself
        presets = sorted((HERE / "models").glob("*.toml"))
        if not presets:
            raise SystemExit(f"{HERE / 'models'}: no preset files (*.toml) to ship; is the source tree complete?")
        target = Path(self.build_lib) / "cellbench" / "_presets"
        target.mkdir(parents=True, exist_ok=True)
        for src in presets:
            shutil.copyfile(src, target / src.name)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        target = Path(self.build_lib) / "cellbench" / "_presets"
        return super().get_outputs(include_bytecode) + [str(target / p.name) for p in (HERE / "models").glob("*.toml")]


setup(cmdclass={"build_py": BuildWithPresets})
