"""The module's two surfaces: ``__all__`` (what an application uses) and ``__backend__`` (what a
store module builds on), and that eventsourcery_pg needs nothing else of the core."""

from __future__ import annotations

import ast
import pathlib
import typing

import eventsourcery as es

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_name_of_both_surfaces_exists_once():
    assert len(set(es.__all__)) == len(es.__all__)
    assert len(set(es.__backend__)) == len(es.__backend__)
    assert not set(es.__all__) & set(es.__backend__)
    missing = [name for name in es.__all__ + es.__backend__ if not hasattr(es, name)]
    assert missing == []


def test_no_type_variable_is_exported():
    exported = [getattr(es, name) for name in es.__all__ + es.__backend__]
    assert not [value for value in exported if isinstance(value, typing.TypeVar)]
    public_typevars = [name for name, value in vars(es).items()
                       if isinstance(value, typing.TypeVar) and not name.startswith("_")]
    assert public_typevars == []


def test_every_public_class_and_function_of_the_core_is_on_a_surface():
    tree = ast.parse((ROOT / "eventsourcery.py").read_text())
    defined = {node.name for node in tree.body
               if isinstance(node, (ast.ClassDef, ast.FunctionDef))
               and not node.name.startswith("_")}
    assert defined - set(es.__all__) - set(es.__backend__) == {"main"}  # the console script's


def test_the_postgres_backend_uses_only_the_backend_interface_and_the_application_surface():
    tree = ast.parse((ROOT / "eventsourcery_pg.py").read_text())
    used = {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "es"}
    assert used, "eventsourcery_pg imports eventsourcery as es"
    assert sorted(used - set(es.__all__) - set(es.__backend__)) == []
