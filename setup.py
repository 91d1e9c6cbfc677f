"""Build hook: install each top-level module as a typed package (PEP 561).

Everything else is in pyproject.toml. The source tree keeps the modules a user
vendors as single files (``eventsourcery.py``, ``eventsourcery_pg.py``,
``eventsourcery_web.py``: the ``py-modules`` list there; adding a module is adding its
name to that list).
PEP 561 marks packages, not single modules, so a type checker ignores a lone
``py.typed`` beside them. The build therefore lays each module ``NAME.py`` out
as a package ``NAME/``:

- ``NAME/__init__.py``, the module's source, unchanged;
- ``NAME/py.typed``, the marker, so mypy and pyright read the annotations;
- ``NAME/__main__.py`` when the module has a top-level ``main()``, so that
  ``python -m NAME`` still runs it (``sys.exit(main())``).

``pip install .`` and the wheel get that layout. So does ``pip install -e .``:
it defaults to setuptools' strict editable mode, a tree of links to the source
files under ``build/`` (re-run it after adding a module), because the default
mode finds the modules by an import hook that type checkers do not follow.
``--config-settings editable_mode=compat`` still gives the plain path entry.
"""

from __future__ import annotations

import ast
import os

from setuptools import setup
from setuptools.command.build_py import build_py

MARKER = "py.typed"
MAIN = '''"""``python -m {name}``: runs ``{name}.main()``."""

import sys

from {name} import main

sys.exit(main())
'''


def _has_main(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


class BuildPyAsPackages(build_py):
    """``build_py`` that writes every top-level module ``NAME.py`` as the package ``NAME/``."""

    def get_module_outfile(self, build_dir: str, package: list[str], module: str) -> str:
        if any(package):  # a module inside a package stays as it is
            return str(super().get_module_outfile(build_dir, package, module))
        return os.path.join(build_dir, module, "__init__.py")

    def _extras(self) -> dict[str, str | None]:
        """Each module's files besides ``__init__.py``: target -> source (None: generated)."""
        extras: dict[str, str | None] = {}
        for package, module, module_file in self.find_all_modules():
            if package:
                continue
            extras[os.path.join(self.build_lib, module, MARKER)] = MARKER
            if _has_main(module_file):
                extras[os.path.join(self.build_lib, module, "__main__.py")] = None
        return extras

    def _write_extras(self) -> None:
        for target, source in self._extras().items():
            self.mkpath(os.path.dirname(target))
            if source is not None:
                self.copy_file(source, target, preserve_mode=False)
            else:
                name = os.path.basename(os.path.dirname(target))
                with open(target, "w", encoding="utf-8") as f:
                    f.write(MAIN.format(name=name))

    def build_modules(self) -> None:
        super().build_modules()
        self._write_extras()

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # setuptools builds nothing then; the link tree copies these
            self._write_extras()

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs = list(super().get_outputs(include_bytecode))
        return outputs + [target for target in self._extras() if target not in outputs]

    def get_output_mapping(self) -> dict[str, str]:
        # An editable install links each target to its source; it copies the generated __main__.py.
        sources = {target: src for target, src in self._extras().items() if src is not None}
        return {**super().get_output_mapping(), **sources}


setup(
    cmdclass={"build_py": BuildPyAsPackages},
    options={"editable_wheel": {"mode": "strict"}},
)
