"""The wheel installs into a fresh virtual environment and is typed (py.typed in both packages).

This is what the README tells a user to do to use versionstore from their own
environment or notebook kernel. The wheel is built offline (hatchling is in the
``test`` extra; no build isolation); the fresh environment gets the wheel with
``--no-deps`` and finds the dependencies (zarr, numpy, lmdb …) through a ``.pth``
line naming this interpreter's site-packages, so nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (built,) = out.glob("versionstore-*.whl")
    return built


def test_wheel_ships_both_packages_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"versionstore/py.typed", "zarrstore/py.typed"} <= names
    assert {"versionstore/__init__.py", "zarrstore/__init__.py", "versionstore/cli.py"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "versionstore = versionstore.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def test_wheel_installs_into_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies from this interpreter's environment: a plain path line adds the
    # directory after the venv's own site-packages and runs none of its .pth files,
    # so an editable install of this checkout there cannot shadow the wheel.
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_shared_dependencies.pth").write_text("\n".join(sorted(shared)) + "\n")
    check = (
        "import versionstore, zarrstore, pathlib, sys\n"
        "for package in (versionstore, zarrstore):\n"
        "    here = pathlib.Path(package.__file__).parent\n"
        f"    assert here.is_relative_to({str(venv)!r}), here\n"
        "    assert (here / 'py.typed').exists()\n"
        "print(versionstore.__version__)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the wheel only
    result = subprocess.run([str(python), "-c", check], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == wheel.name.split("-")[1]
    # The console script came with it.
    version = subprocess.run([str(venv / "bin" / "versionstore"), "--version"],
                             capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"versionstore {wheel.name.split('-')[1]}"
    # And it works: a repository by path, a commit, the log from the command line.
    work = (
        "import versionstore as vs, zarr\n"
        "repo = vs.Repository.create('repo')\n"
        "session = repo.writable_session('main')\n"
        "zarr.create_array(session.store, name='a', shape=(4,), dtype='i4')[:] = 1\n"
        "session.commit('from the wheel')\n"
    )
    subprocess.run([str(python), "-c", work], check=True, timeout=120, env=env, cwd=tmp_path)
    log = subprocess.run([str(venv / "bin" / "versionstore"), "log", "repo"], check=True,
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert "from the wheel" in log.stdout
