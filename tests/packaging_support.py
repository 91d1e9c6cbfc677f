"""Build the project's wheel from a copy of the sources, for the packaging tests.

The wheel is built with ``pip wheel --no-build-isolation --no-index``, so the
environment's setuptools builds it with no network (the ``test`` extra asks for
one that can: ``setuptools>=77``, which has ``bdist_wheel`` and PEP 639
license metadata built in). The build reads a copy of the sources, so it
leaves nothing (``build/``, ``*.egg-info``) in the tree.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: what the build reads besides the top-level ``*.py`` files (setup.py and the modules)
BUILD_FILES = ("pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "py.typed")


def module_sources() -> list[pathlib.Path]:
    """The top-level modules of the source tree (``eventsourcery*.py``): what a user vendors."""
    return sorted(ROOT.glob("eventsourcery*.py"))


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def build_wheel(workdir: pathlib.Path) -> pathlib.Path:
    """Build the wheel under ``workdir`` and return its path."""
    if _setuptools_version() < (77,):
        pytest.skip("building the wheel without isolation needs setuptools>=77 "
                    "(pip install -e '.[test]')")
    src, out = workdir / "src", workdir / "wheel"
    src.mkdir()
    out.mkdir()
    for path in [*(ROOT / name for name in BUILD_FILES), *ROOT.glob("*.py")]:
        if path.exists():
            shutil.copy2(path, src / path.name)
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    wheels = list(out.glob("eventsourcery-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
