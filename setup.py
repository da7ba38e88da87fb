"""Setuptools shim so Beam runners can stage this package with --setup_file ./setup.py (metadata: pyproject.toml)."""

from setuptools import setup

setup()
