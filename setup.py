"""Packages and package data; everything else about the project is in pyproject.toml.

data/ stays at the repository root (the project card fixes it there) and ships inside the wheel as
``mmdg_lite/_data``, where ``mmdg_lite._resources.data_path`` finds it, so an installed wheel loads
the shipped models without retraining. Every file under data/ travels, whatever its subfolder.
An editable install (``pip install -e .``) maps nothing: ``data_path`` falls back to data/.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mmdg_lite", "mmdg_lite.*"]) + ["mmdg_lite._data"],
    package_dir={"mmdg_lite._data": "data"},
    # package_data alone (no MANIFEST-based data): data/'s subfolders are data, not packages.
    include_package_data=False,
    package_data={"mmdg_lite._data": ["**/*"]},
    exclude_package_data={"mmdg_lite._data": ["**/__pycache__/*", "**/*.pyc", "**/.ipynb_checkpoints/*"]},
)
