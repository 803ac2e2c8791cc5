"""The bundle travels with the deployment: the gateway packs the bundle folder (and the ONNX export it serves) into
one tar in Ray's object store, and each replica unpacks it into a cache on its own node, under a key that the
packed files decide. A node that holds that key already does not fetch the tar again, so a node needs only the
installed project, not the gateway's disk.

    <cache>/<key>/models/   the bundle, as the gateway had it
    <cache>/<key>/onnx/     its export (`<fingerprint>/...`, what --onnx-dir opens), when the runtime is ONNX
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

DEFAULT_CACHE = os.path.join(tempfile.gettempdir(), "semgen-bundles")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def pack_bundle(models: str | Path, export: str | Path | None = None) -> tuple[str, bytes]:
    """(key, tar bytes) of the bundle folder and, if given, its export folder (<onnx-dir>/<fingerprint>/). The key
    is a sha256 over every packed file's path and bytes: other weights, another key."""
    digest, buf = hashlib.sha256(), io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for top, root in (("models", Path(models)), ("onnx", None if export is None else Path(export))):
            if root is None:
                continue
            base = root if top == "models" else root.parent  # the export keeps its <fingerprint>/ folder
            for path in _files(root):
                name = f"{top}/{path.relative_to(base).as_posix()}"
                data = path.read_bytes()
                digest.update(name.encode() + b"\0" + data)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()[:24], buf.getvalue()


def materialize(key: str, fetch: Callable[[], bytes], cache: str | Path = DEFAULT_CACHE) -> tuple[Path, bool]:
    """<cache>/<key>, unpacked from `fetch()` unless this node has it already; (folder, whether it was fetched).
    Replicas on one node may race: each unpacks beside, one rename wins, the others throw theirs away."""
    cache = Path(cache)
    folder = cache / key
    if folder.is_dir():
        return folder, False
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
    try:
        with tarfile.open(fileobj=io.BytesIO(fetch()), mode="r") as tar:
            tar.extractall(staging, filter="data")  # plain files only, nothing outside the folder
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, True
