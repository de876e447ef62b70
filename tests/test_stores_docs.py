"""The examples of the HTTP, object-storage and OpenDAL sections of ``docs/stores.md`` run.

The pages name a public URL; here it points at the test HTTP server on
127.0.0.1, serving the directory the examples write into. The object-storage
examples construct S3 stores without contacting anyone (obstore connects on
first use) and use the local and in-memory backings for I/O; dummy AWS
credentials are set all the same. The OpenDAL examples write with the ``fs``
and memory services and construct FTP and S3 stores, which connect on first use.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from http_support import http_server_fixture, served_dir_fixture  # noqa: F401
from object_support import aws_env_fixture  # noqa: F401

DOC = Path(__file__).resolve().parents[1] / "docs" / "stores.md"
PUBLIC_URL = "https://data.example.org"
REMOTE_SECTIONS = DOC.read_text().partition("\n## HTTPStore\n")[2]
BLOCKS = re.findall(r"^```python\n(.*?)^```", REMOTE_SECTIONS, flags=re.DOTALL | re.MULTILINE)


def test_the_sections_have_examples() -> None:
    assert len(BLOCKS) >= 5
    assert PUBLIC_URL in REMOTE_SECTIONS


def test_examples_run_in_order(served_dir: tuple[Path, str], aws_env: None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    directory, url = served_dir
    monkeypatch.chdir(directory)  # "ocean.zarr" is written here, and served from here
    namespace: dict[str, object] = {"__name__": "docs"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's consolidated-metadata notice
        # The opening example reads a dataset the worked example publishes: publish first.
        for number in [*range(2, len(BLOCKS)), 0, 1]:
            code = BLOCKS[number].replace(PUBLIC_URL, url)
            exec(compile(code, f"{DOC.name}[{number}]", "exec"), namespace)
    assert (directory / "ocean.zarr" / "zarr.json").is_file()
