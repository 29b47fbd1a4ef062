"""poolkit's public surface: __all__ matches what the package exports, and nothing leaks in."""

from __future__ import annotations

import importlib
import inspect
import types
import typing

import pytest

import poolkit

PUBLIC_MODULES = [
    "poolkit",
    "poolkit.debug",
    "poolkit.leaks",
    "poolkit.prometheus",
    "poolkit.redis",
    "poolkit.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_matches_exports(name: str) -> None:
    module = importlib.import_module(name)

    def ours(value: object) -> bool:
        origin = typing.get_origin(value)
        if origin in (typing.Union, types.UnionType):  # a type alias such as SelectCase
            return all(ours(arg) for arg in typing.get_args(value))
        return str(getattr(origin or value, "__module__", "")).startswith("poolkit")

    exported = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_") and not isinstance(value, types.ModuleType) and ours(value)
    }
    assert sorted(module.__all__) == module.__all__, "keep __all__ sorted"
    assert set(module.__all__) == exported


def test_every_public_name_is_documented_and_lives_in_a_private_module() -> None:
    for name in poolkit.__all__:
        obj = getattr(poolkit, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"poolkit.{name} has no docstring"
            assert obj.__module__.startswith("poolkit._"), obj.__module__


def test_exception_tree() -> None:
    for exc in (poolkit.WouldBlock, poolkit.ChannelClosed, poolkit.EndOfChannel):
        assert issubclass(exc, poolkit.PoolkitError)
    assert issubclass(poolkit.PoolkitError, Exception)
    # the docstring draws the tree: every exception class appears in it
    doc = importlib.import_module("poolkit._core._exceptions").__doc__ or ""
    for name in ("PoolkitError", "WouldBlock", "ChannelClosed", "EndOfChannel"):
        assert name in doc


def test_py_typed_marker_ships() -> None:
    from importlib.resources import files

    assert files("poolkit").joinpath("py.typed").is_file()
