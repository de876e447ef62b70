"""The layers point one way; this walks every module's imports to prove it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("path", _modules("zarrstore"), ids=lambda p: p.name)
def test_zarrstore_never_imports_versionstore(path: Path) -> None:
    assert "versionstore" not in _top(_imports(path))


@pytest.mark.parametrize("path", _modules("zarrstore") + _modules("versionstore"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_only_the_bridge_imports_zarr(path: Path) -> None:
    allowed = {"zarr_bridge.py", "testing.py", "demo.py", "importing.py"}
    if path.name not in allowed:
        assert "zarr" not in _top(_imports(path)), f"{path} imports zarr"


@pytest.mark.parametrize("path", _modules("zarrstore"), ids=lambda p: p.name)
def test_zarrstore_lmdb_boundary(path: Path) -> None:
    # The shared environment machinery and the LMDB store; nothing else in zarrstore.
    if path.name not in {"lmdb_environment.py", "lmdb.py"}:
        assert "lmdb" not in _top(_imports(path)), f"{path} imports lmdb"


@pytest.mark.parametrize("path", _modules("versionstore"), ids=lambda p: p.name)
def test_versionstore_third_party_boundaries(path: Path) -> None:
    top = _top(_imports(path))
    if path.name != "lmdb.py":
        assert "lmdb" not in top
    if path.name != "codec.py":
        assert not {"msgpack", "zstandard"} & top
    # obstore's requests (and its errors) stay in one boundary module; the storage
    # descriptions only build stores, and the backend names the store type in hints.
    if path.name not in {"object_io.py", "cloud.py", "object.py"}:
        assert "obstore" not in top


@pytest.mark.parametrize("path", _modules("zarrstore") + _modules("versionstore"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_only_the_cli_reads_argv_and_environment(path: Path) -> None:
    if path.name in {"cli.py", "demo.py"}:
        return
    text = path.read_text()
    assert "sys.argv" not in text and "os.environ" not in text, path
