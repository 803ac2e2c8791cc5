"""User heads without a shared folder: one detached Ray actor mirrors every user head, so a head fitted on any
replica serves on every replica, on any node, and outlives replicas and the gateway.

- The gateway seeds the mirror from its --heads-dir when it deploys (that folder is the record: what it holds
  replaces what the mirror held) and writes each newly fitted head back into it (`keep_head`).
- The jobs replica that fits a head saves it in its own folder, as the embedded engine does, then `put`s it.
- Every replica keeps its own folder in step before each call (`HeadsFollower.sync`): the heads the mirror changed
  since the version it saw are written in, the ones it no longer has are removed; the engine then takes them in
  from its folder as before (`take_in_saved_heads`), with the same name rules, limits and replace semantics.

A head travels as a tar of its checkpoint folder (safetensors + JSON).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import tempfile
from pathlib import Path

import ray

from serving.core.errors import Unavailable

MIRROR, NAMESPACE = "semgen-heads", "semgen"
HEAD_NODE = "node:__internal_head__"  # the resource only Ray's head node has


def own_heads_folder(cache: Path) -> Path:
    """A new folder for one replica's user heads in its node's cache, named `heads-<host>-<pid>-…`. The folders of
    replicas gone from this host (restarted, removed by autoscaling, killed) are removed first; another host's are
    left alone, should the cache be on a disk the nodes share."""
    prefix = f"heads-{socket.gethostname()}-"
    for folder in Path(cache).glob(prefix + "*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    Path(cache).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=cache))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@ray.remote(num_cpus=0)
class HeadsMirror:
    """name -> (version, tar of the head folder); `version` counts every change."""

    def __init__(self):
        self.version, self.heads = 0, {}

    def seed(self, heads: dict[str, bytes]) -> int:
        self.version += 1
        self.heads = {name: (self.version, blob) for name, blob in heads.items()}
        return self.version

    def put(self, name: str, blob: bytes) -> int:
        self.version += 1
        self.heads[name] = (self.version, blob)
        return self.version

    def get(self, name: str) -> bytes:
        return self.heads[name][1]

    def since(self, version: int) -> tuple[int, dict[str, bytes], list[str]]:
        """(the current version, the heads changed after `version`, every name the mirror holds)."""
        if version == self.version:
            return version, {}, []
        changed = {name: blob for name, (v, blob) in self.heads.items() if v > version}
        return self.version, changed, list(self.heads)


def mirror():
    """The cluster's mirror, made on first use on the head node (the cluster lives and dies with it; a lost worker
    node does not take the heads with it); it outlives whoever made it (a gateway restart finds it)."""
    return HeadsMirror.options(name=MIRROR, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                               resources={HEAD_NODE: 0.001}).remote()


def pack_head(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(path, arcname=path.relative_to(folder).as_posix())
    return buf.getvalue()


def unpack_head(blob: bytes, target: Path) -> None:
    """The head folder at `target`, replaced whole (unpacked beside it, then moved in)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.parent / f".{target.name}.old-{staging.name}"
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            tar.extractall(staging, filter="data")
        if target.exists():
            target.replace(old)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def user_heads(folder: Path) -> dict[str, bytes]:
    """Every head folder under `folder` (a HeadStore's: <name>/config.json), packed."""
    return {p.parent.name: pack_head(p.parent) for p in sorted(folder.glob("*/config.json"))
            if not p.parent.name.startswith(".")}


class HeadsFollower:
    """A replica's own heads folder, kept in step with the mirror."""

    def __init__(self, folder: Path):
        self.folder, self.version, self.mirror = folder, -1, mirror()

    async def sync(self) -> bool:
        """Bring the folder up to the mirror's version; whether anything changed. Unavailable (retryable) while the
        mirror cannot be reached."""
        try:
            version, changed, names = await self.mirror.since.remote(self.version)
        except ray.exceptions.RayError as e:
            raise Unavailable(f"heads: the cluster's heads mirror cannot be reached ({type(e).__name__}); "
                              "retry shortly") from None
        return self._apply(version, changed, names)

    def sync_now(self) -> None:
        """The same, blocking (a replica's start, before its engines load the folder)."""
        self._apply(*ray.get(self.mirror.since.remote(self.version)))

    def _apply(self, version: int, changed: dict[str, bytes], names: list[str]) -> bool:
        if version == self.version:
            return False
        for name, blob in changed.items():
            unpack_head(blob, self.folder / name)
        for path in self.folder.glob("*/config.json"):
            if path.parent.name not in names and not path.parent.name.startswith("."):
                shutil.rmtree(path.parent)
        self.version = version
        return True

    async def publish(self, name: str) -> None:
        await self.mirror.put.remote(name, pack_head(self.folder / name))
