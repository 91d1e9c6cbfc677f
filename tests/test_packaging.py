"""The wheel ships what it should: each module as a typed package, and the license.

PEP 561 marks packages, not single modules: each top-level module ``NAME.py`` of the
source tree is in the wheel as the package ``NAME/`` (its source as ``__init__.py``,
the ``py.typed`` marker, and a ``__main__.py`` for the module with a ``main()``).
tests/test_typed_wheel.py installs the wheel and type-checks an application against it.
The wheel is built as tests/packaging_support.py says (no build isolation, no network).
"""

from __future__ import annotations

import email.parser
import zipfile
from collections.abc import Iterator

import pytest

from tests.packaging_support import ROOT, build_wheel, module_sources


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("build"))) as zf:
        yield zf


def _metadata(wheel: zipfile.ZipFile):
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(wheel.read(name).decode())


def _top_level(wheel: zipfile.ZipFile) -> set[str]:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))
    return set(wheel.read(name).decode().split())


def test_wheel_ships_each_module_as_a_typed_package(wheel):
    names = set(wheel.namelist())
    modules = {path.stem for path in module_sources()}
    assert {"eventsourcery", "eventsourcery_pg"} <= modules
    # every eventsourcery*.py of the tree is built (list a new one in pyproject's py-modules)
    assert _top_level(wheel) == modules, "list every eventsourcery*.py in pyproject's py-modules"
    for module in modules:
        assert wheel.read(f"{module}/__init__.py") == (ROOT / f"{module}.py").read_bytes(), module
        assert wheel.read(f"{module}/py.typed") == (ROOT / "py.typed").read_bytes(), module
        assert f"{module}.py" not in names, sorted(names)  # one copy, in the package
    assert "py.typed" not in names, sorted(names)  # at the top of site-packages it marks nothing
    main = wheel.read("eventsourcery/__main__.py").decode()
    assert "from eventsourcery import main" in main and "sys.exit(main())" in main, main
    assert "eventsourcery_pg/__main__.py" not in names  # it has no main()
    assert not any(n.startswith(("tests/", "examples/", "bench/")) or n == "setup.py"
                   for n in names), sorted(names)
    assert not any(".data/" in n for n in names), sorted(names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "eventsourcery = eventsourcery:main" in wheel.read(entry_points).decode()


def test_wheel_ships_the_license(wheel):
    names = wheel.namelist()
    licenses = [n for n in names
                if n.split(".dist-info/", 1)[-1] in ("LICENSE", "licenses/LICENSE")]
    assert len(licenses) == 1, names
    text = wheel.read(licenses[0]).decode()
    assert text == (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the eventsourcery authors" in text
    metadata = _metadata(wheel)
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata.get("License-Expression") == "MIT"
