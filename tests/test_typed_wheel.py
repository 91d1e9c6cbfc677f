"""Installed from the wheel, the library's own annotations are what mypy and pyright see (SPEC 8).

The wheel (tests/packaging_support.py) is installed into a fresh virtual environment
outside the checkout; the sample application in tests/typed_app/ is copied to a working
directory outside the checkout and checked by ``mypy --strict`` and by basedpyright
(pyright, strict mode: tests/typed_app/pyrightconfig.json), both run from this
environment against the new environment's interpreter. ``app.py`` and ``app_pg.py`` must
check clean; ``app_wrong.py`` must get an error on exactly the lines marked
``# expected error`` (one or more each, none elsewhere: were the library ``Any``, none
would be reported). The same holds for the editable install (the wheel ``pip install -e .``
builds) and with the files vendored (copied beside the application) instead of installed;
and the application runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import typing
import venv

import pytest

import eventsourcery as es
from tests.packaging_support import ROOT, build_wheel

APP = ROOT / "tests" / "typed_app"
MARK = "# expected error"
TIMEOUT = 180


def _run(args: list[str | pathlib.Path],
         cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    # Nothing of the checkout leaks in through the environment.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MYPYPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _python(env_dir: pathlib.Path) -> pathlib.Path:
    if os.name == "nt":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


@pytest.fixture(scope="module")
def checkers() -> None:
    for tool in ("mypy", "basedpyright"):
        p = _run([sys.executable, "-m", tool, "--version"])
        if p.returncode != 0:
            pytest.fail(f"{tool} is not installed here: pip install -e '.[test]'\n{p.stderr}")


class Installed(typing.NamedTuple):
    python: pathlib.Path  # the virtual environment's interpreter
    source: pathlib.Path | None  # editable: the copy of the sources it runs


@pytest.fixture(scope="module", params=["wheel", "editable"])
def installed(request, tmp_path_factory) -> Installed:
    """A fresh virtual environment with the wheel installed by pip (no network), or with the
    editable wheel that ``pip install -e .`` builds."""
    workdir = tmp_path_factory.mktemp(request.param)
    wheel = build_wheel(workdir, editable=request.param == "editable")
    env_dir = workdir / "env"
    venv.create(env_dir, with_pip=False)
    python = _python(env_dir)
    # This environment's pip installs into the new one (pip >= 22.3): no time spent on ensurepip.
    p = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
              "--disable-pip-version-check", wheel])
    assert p.returncode == 0, p.stdout + p.stderr
    return Installed(python, workdir / "src" if request.param == "editable" else None)


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> pathlib.Path:
    """The interpreter of a fresh virtual environment with nothing installed."""
    env_dir = tmp_path_factory.mktemp("bare") / "env"
    venv.create(env_dir, with_pip=False)
    return _python(env_dir)


def _app(where: pathlib.Path, vendored: bool = False) -> pathlib.Path:
    """A copy of the sample application (vendored: and of the library's modules) in a new folder."""
    app = where / "app"
    app.mkdir()
    for path in [*APP.glob("*.py"), APP / "pyrightconfig.json"]:
        shutil.copy2(path, app / path.name)
    if vendored:
        for module in ("eventsourcery.py", "eventsourcery_pg.py"):
            shutil.copy2(ROOT / module, app / module)
    return app


FILES = ("app.py", "app_pg.py", "app_wrong.py")


def _expected(app: pathlib.Path) -> set[tuple[str, int]]:
    found = {(name, number) for name in FILES
             for number, line in enumerate((app / name).read_text().splitlines(), 1)
             if line.endswith(MARK)}
    assert len(found) >= 5 and {name for name, _ in found} == {"app_wrong.py"}, found
    return found


def _mypy(python: pathlib.Path, app: pathlib.Path) -> tuple[set[tuple[str, int]], str]:
    # Errors inside the modules the application imports are not reported, vendored as installed:
    # `mypy --strict eventsourcery.py eventsourcery_pg.py` is CI's own step (psycopg installed).
    p = _run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
              "--no-incremental", "--cache-dir", app / ".mypy_cache",
              "--python-executable", python, *FILES], cwd=app)
    output = p.stdout + p.stderr
    assert p.returncode in (0, 1), output  # 1: errors found; anything else: mypy itself failed
    errors = {(m[1], int(m[2])) for m in re.finditer(r"^(\S+?):(\d+): error:", p.stdout, re.M)}
    return errors, output


def _pyright(python: pathlib.Path, app: pathlib.Path) -> tuple[set[tuple[str, int]], str]:
    p = _run([sys.executable, "-m", "basedpyright", "--outputjson", "--pythonpath", python,
              *FILES], cwd=app)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    report = json.loads(p.stdout)
    diagnostics = report["generalDiagnostics"]
    output = "\n".join(f"{pathlib.Path(d['file']).name}:{d['range']['start']['line'] + 1}: "
                       f"{d['severity']}: {d['message']} ({d.get('rule')})" for d in diagnostics)
    assert report["summary"]["filesAnalyzed"] == len(FILES), p.stdout
    assert all(d["severity"] == "error" for d in diagnostics), output  # no warnings either
    errors = {(pathlib.Path(d["file"]).name, d["range"]["start"]["line"] + 1) for d in diagnostics}
    return errors, output


@pytest.mark.parametrize("checker", [_mypy, _pyright], ids=["mypy", "pyright"])
def test_checkers_see_the_installed_types(checker, checkers, installed, tmp_path):
    app = _app(tmp_path)
    errors, output = checker(installed.python, app)
    assert errors == _expected(app), output


@pytest.mark.parametrize("checker", [_mypy, _pyright], ids=["mypy", "pyright"])
def test_checkers_see_the_vendored_types(checker, checkers, bare, tmp_path):
    app = _app(tmp_path, vendored=True)
    errors, output = checker(bare, app)
    assert errors == _expected(app), output


def test_the_installed_app_runs(installed, tmp_path):
    """The application runs on the installed packages (a reactor's ``emits_events`` list too)."""
    app, python = _app(tmp_path), installed.python
    p = _run([python, "app.py"], cwd=app)
    assert (p.returncode, p.stdout.strip()) == (0, "typed app: ok"), p.stdout + p.stderr
    p = _run([python, "-c", "import eventsourcery, eventsourcery_pg"], cwd=app)
    assert "needs psycopg" in p.stderr  # installed with --no-deps: the message says what is missing
    p = _run([python, "-c", "import eventsourcery; print(eventsourcery.__file__)"], cwd=app)
    where = pathlib.Path(p.stdout.strip())
    assert where.parts[-2:] == ("eventsourcery", "__init__.py"), p.stdout + p.stderr
    if installed.source is None:
        assert where.parts[-3] == "site-packages", where
    else:  # a link to the source file: an edit shows at once
        assert where.resolve() == (installed.source / "eventsourcery.py").resolve(), where
    for command in ([python, "-m", "eventsourcery", "--version"],
                    [python.parent / "eventsourcery", "--version"]):
        p = _run(command, cwd=app)
        version = f"eventsourcery {es.__version__}"
        assert (p.returncode, p.stdout.strip()) == (0, version), (command, p.stdout + p.stderr)


def test_the_vendored_app_runs(bare, tmp_path):
    app = _app(tmp_path, vendored=True)
    p = _run([bare, "app.py"], cwd=app)
    assert (p.returncode, p.stdout.strip()) == (0, "typed app: ok"), p.stdout + p.stderr
