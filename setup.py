"""Finds every subpackage of the three roots: app/, engine/ and models/ are the packages
harken.app, harken.engine and harken.models (pyproject.toml holds everything else)."""

from setuptools import find_packages, setup

ROOTS = ("app", "engine", "models")

setup(
    packages=[f"harken.{name}" for root in ROOTS
              for name in (root, *(f"{root}.{sub}" for sub in find_packages(root)))],
    package_dir={f"harken.{root}": root for root in ROOTS},
)
