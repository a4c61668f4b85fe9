"""Packages of the wheel: the library, plus the card's top-level conf/ and serve/ mapped into it
(pyproject.toml's package-dir): pkg://pinrank.conf is Hydra's config search path and
pinrank.service the deployable HTTP service."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["pinrank", "pinrank.*"]), "pinrank.conf",
                "pinrank.service"])  # fmt: skip
