"""Build hook: put the ``py.typed`` marker in the wheel, next to the two modules.

Everything else is in pyproject.toml. setuptools copies package data only for
packages, and this distribution is two top-level modules (``py-modules``), so
``build_py`` copies the marker itself. The sdist carries it (MANIFEST.in).
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py

MARKER = "py.typed"


class BuildPyWithMarker(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install leaves the files where they are
            self.copy_file(MARKER, os.path.join(self.build_lib, MARKER), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs = super().get_outputs(include_bytecode)
        target = os.path.join(self.build_lib, MARKER)
        return outputs if target in outputs else [*outputs, target]

    def get_output_mapping(self) -> dict[str, str]:
        return {**super().get_output_mapping(), os.path.join(self.build_lib, MARKER): MARKER}


setup(cmdclass={"build_py": BuildPyWithMarker})
