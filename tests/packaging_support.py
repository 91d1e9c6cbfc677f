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


def copy_sources(dest: pathlib.Path) -> pathlib.Path:
    """Copy what the build reads into ``dest`` (a new folder) and return it."""
    dest.mkdir()
    for path in [*(ROOT / name for name in BUILD_FILES), *ROOT.glob("*.py")]:
        if path.exists():
            shutil.copy2(path, dest / path.name)
    return dest


def build_wheel(workdir: pathlib.Path, editable: bool = False) -> pathlib.Path:
    """Build the wheel (``editable``: the wheel of ``pip install -e``) under ``workdir``; its path.

    An editable wheel refers to ``workdir / "src"``, the copy of the sources it was built from.
    """
    if _setuptools_version() < (77,):
        pytest.skip("building the wheel without isolation needs setuptools>=77 "
                    "(pip install -e '.[test]')")
    src, out = copy_sources(workdir / "src"), workdir / "wheel"
    out.mkdir()
    if editable:  # what pip runs for `pip install -e .`, without build isolation
        command = [sys.executable, "-c", "import sys, setuptools.build_meta as backend; "
                   "backend.build_editable(sys.argv[1])", str(out)]
    else:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                   "--no-index", "--disable-pip-version-check", "-w", str(out), str(src)]
    p = subprocess.run(command, cwd=src, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    wheels = list(out.glob("eventsourcery-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
