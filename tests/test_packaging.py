"""The wheel ships what it should: both modules, the ``py.typed`` marker and the license.

The wheel is built from the source tree with ``pip wheel --no-build-isolation``,
so the environment's setuptools builds it (the ``test`` extra asks for one
that can: ``setuptools>=77``, which has ``bdist_wheel`` and PEP 639 license
metadata built in).
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "py.typed",
           "eventsourcery.py", "eventsourcery_pg.py", "eventsourcery_web.py")


def _setuptools_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return (0,)
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    if _setuptools_version() < (77,):
        pytest.skip("building the wheel without isolation needs setuptools>=77 (pip install -e '.[test]')")
    # A copy of the sources the build reads, so the build leaves nothing (build/, *.egg-info) in the tree.
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    wheels = list(out.glob("eventsourcery-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile):
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_wheel_ships_the_modules_and_the_typed_marker(wheel):
    names = set(wheel.namelist())
    # top level, next to the modules (site-packages), not under a data-files scheme
    modules = {"eventsourcery.py", "eventsourcery_pg.py", "eventsourcery_web.py"}
    assert modules | {"py.typed"} <= names, sorted(names)
    assert not any(n.startswith(("tests/", "examples/", "bench/")) or n == "setup.py" for n in names), sorted(names)
    assert not any(".data/" in n for n in names), sorted(names)
    assert wheel.read("py.typed") == (ROOT / "py.typed").read_bytes()


def test_wheel_ships_the_license(wheel):
    names = wheel.namelist()
    licenses = [n for n in names if n.split(".dist-info/", 1)[-1] in ("LICENSE", "licenses/LICENSE")]
    assert len(licenses) == 1, names
    text = wheel.read(licenses[0]).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the eventsourcery authors" in text
    metadata = _metadata(wheel)
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata.get("License-Expression") == "MIT"
