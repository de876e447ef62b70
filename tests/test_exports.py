"""Every public module lists its names in ``__all__``; each listed name exists and is documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import versionstore
import zarrstore


def _modules() -> list[str]:
    names = []
    for package in (zarrstore, versionstore):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_module_exports_are_real_and_documented(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # optional extras (remote stores) may be absent
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    assert module.__doc__, f"{name} has no module docstring"
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ lists missing {symbol}"
        value = getattr(module, symbol)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, f"{name}.{symbol} has no docstring"


@pytest.mark.parametrize("package", [zarrstore, versionstore])
def test_packages_re_export_explicitly(package: object) -> None:
    exported = package.__all__  # type: ignore[attr-defined]
    assert exported == sorted(exported)
    assert len(set(exported)) == len(exported)


def test_icechunk_names_say_what_to_use_instead() -> None:
    # A ported icechunk script fails on its first line; the error names the equivalent.
    with pytest.raises(AttributeError, match=r"an icechunk name: use vs\.lmdb_storage\(path\)"):
        versionstore.local_filesystem_storage  # noqa: B018 - the attribute access is the test
    with pytest.raises(AttributeError, match=r"use vs\.VersionStoreError"):
        versionstore.IcechunkError  # noqa: B018
    with pytest.raises(AttributeError, match=r"^module 'versionstore' has no attribute 'nope'$"):
        versionstore.nope  # noqa: B018
