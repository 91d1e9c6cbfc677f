"""Every ```python block in README.md runs, so the README never lies."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_code_blocks() -> None:
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, tmp_path: pathlib.Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"),
         {"__name__": f"readme_block_{index}"})


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_the_module_docstring_tutorial_runs() -> None:
    import textwrap

    import eventsourcery

    doc = eventsourcery.__doc__ or ""
    tutorial = textwrap.dedent(doc.split("::\n", 1)[1].split("\nThe sections below", 1)[0])
    assert "repo.save(" in tutorial
    exec(compile(tutorial, "eventsourcery docstring", "exec"), {"__name__": "docstring_tutorial"})
