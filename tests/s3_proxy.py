"""The serialising, request-counting S3 proxy the tests put in front of moto.

It lives in ``benchmarks/s3_proxy.py`` so that the object-storage benchmark
counts requests with the very same proxy the request-count tests assert on;
this module re-exports it for the tests (``benchmarks/`` is a top-level
package of the repository, not of the installed distribution).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.s3_proxy import S3Proxy, serve_s3_proxy  # noqa: E402

__all__ = ["S3Proxy", "serve_s3_proxy"]
