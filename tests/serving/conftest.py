"""Serving tests: make `serving` and `servingkit` importable and the gRPC stubs current."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, Path(__file__).resolve().parent):  # works with any pytest import mode
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def _build_stubs_if_stale() -> None:
    stubs = ROOT / "serving" / "_generated" / "semgen" / "v1" / "pyramid_pb2.py"
    newest_proto = max(p.stat().st_mtime for p in (ROOT / "protos").rglob("*.proto"))
    if not stubs.exists() or stubs.stat().st_mtime < newest_proto:
        from serving.build_protos import build

        build()


_build_stubs_if_stale()
