"""Packages and package data; everything else about the project is in pyproject.toml.

data/ stays at the repository root (the project card fixes it there) and ships inside the wheel as
``mmdg_lite/_data``, where ``mmdg_lite._resources.data_path`` finds it, so an installed wheel loads
the shipped models without retraining. Every file under data/ travels, whatever its subfolder.
An editable install (``pip install -e .``) maps nothing: ``data_path`` falls back to data/.

Every build starts from an empty ``build/lib/mmdg_lite``: setuptools copies the sources over the
previous build and keeps files since removed or renamed there, which ``pip install .`` in a
checkout that was pulled or edited would otherwise ship in the wheel.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class FreshBuildPy(build_py):
    """build_py that first removes the package's previous build (not in editable mode, which
    builds nothing into build/lib)."""

    def run(self) -> None:
        stale = Path(self.build_lib) / "mmdg_lite"
        if not getattr(self, "editable_mode", False) and stale.is_dir():
            shutil.rmtree(stale)
        super().run()


setup(
    packages=find_packages(include=["mmdg_lite", "mmdg_lite.*"]) + ["mmdg_lite._data"],
    package_dir={"mmdg_lite._data": "data"},
    # package_data alone (no MANIFEST-based data): data/'s subfolders are data, not packages.
    include_package_data=False,
    package_data={"mmdg_lite._data": ["**/*"]},
    exclude_package_data={"mmdg_lite._data": ["**/__pycache__/*", "**/*.pyc", "**/.ipynb_checkpoints/*"]},
    cmdclass={"build_py": FreshBuildPy},
)
