"""Heads on disk: the bundle's heads (<models>/heads/<name>/) and the heads users fit while serving,
saved one checkpoint folder per head in a folder of their own, beside the bundle, never in it.

`HeadStore` owns the user folder and the rules for names: the shape of a name, the reserved
segmenter name, bundled heads that cannot be replaced, and a user head that is replaced only when
asked and never while it is being fitted, and the limits on user heads: how many (`max_heads`) and
their bytes on disk (`max_bytes`); a replaced head counts once. Heads already on disk over the limits
stay (`over_limits` says so); new heads are refused until there is room. A head is written to a
hidden staging folder (".<name>.saving") and moved into place only when it fits.
It is thread-safe (fits run on job threads)."""

from __future__ import annotations

import re
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from semgen.checkpoints import load_checkpoint, read_config, save_checkpoint
from semgen.networks.heads import SemanticHead
from semgen.pipelines.semantics.models import SEGMENTER

HEAD_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class HeadExists(Exception):
    """The name is taken, or being fitted now, and replacing it was not asked for ("name: ...")."""


class HeadLimit(Exception):
    """A new head would go over the user heads' limit of count or bytes ("heads: ...")."""


_FREE = "fit it under the name of an existing user head with replace set, or have one removed from the heads folder"


def head_folders(folder: str | Path) -> list[Path]:
    """Every checkpoint folder folder/<name>/, by name; hidden ones (a save in progress) skipped."""
    return sorted(p.parent for p in Path(folder).glob("*/config.json") if not p.parent.name.startswith("."))


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder`."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def load_heads(folder: str | Path) -> Iterator[tuple[str, SemanticHead]]:
    """(name, head) for every checkpoint in folder/<name>/, by name; nothing when there is no folder."""
    for path in head_folders(folder):
        yield path.name, load_checkpoint(path)


class HeadStore:
    """User heads in `folder`, beside the `bundled` head names; `shots`: user head -> samples it was fitted from;
    `sizes`: user head -> bytes on disk; `max_heads`, `max_bytes`: the limits on user heads (None: none)."""

    def __init__(self, folder: str | Path, bundled: Iterable[str] = (), shots: dict[str, int] | None = None,
                 sizes: dict[str, int] | None = None, max_heads: int | None = None, max_bytes: int | None = None):
        self.folder = Path(folder)
        self.bundled = frozenset(bundled)  # the bundle's heads that no user head replaced
        self.max_heads = max_heads
        self.max_bytes = max_bytes
        self._user = dict(shots or {})
        self._bytes = {name: (sizes or {}).get(name, 0) for name in self._user}
        self._fitting: set[str] = set()  # names being fitted now
        self._lock = threading.Lock()  # fits run on job threads

    @classmethod
    def open(cls, folder: str | Path, models_dir: str | Path | None = None, max_heads: int | None = None,
             max_bytes: int | None = None) -> "HeadStore":
        """The user heads saved in `folder` and the heads of the bundle in `models_dir`. A user head with
        a bundled head's name replaced it (SemanticsPipeline.from_dir loads user heads last)."""
        paths = head_folders(folder)
        user = {p.name: int(read_config(p).get("training", {}).get("shots", 0)) for p in paths}
        bundle = {p.name for p in head_folders(Path(models_dir) / "heads")} if models_dir else set()
        return cls(folder, bundle - set(user), user, {p.name: folder_bytes(p) for p in paths}, max_heads, max_bytes)

    def rescan(self) -> None:
        """Take in what the folder holds now: heads another process saved since (a Ray Serve replica beside the one
        that fitted them). Fits under way keep their names."""
        paths = head_folders(self.folder)
        user = {p.name: int(read_config(p).get("training", {}).get("shots", 0)) for p in paths}
        sizes = {p.name: folder_bytes(p) for p in paths}
        with self._lock:
            self.bundled = self.bundled - set(user)
            self._user, self._bytes = user, sizes

    # ---- listing ------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every head by name, bundled and user, sorted."""
        with self._lock:
            return sorted(self.bundled | set(self._user))

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self.bundled or name in self._user

    @property
    def user(self) -> dict[str, int]:
        """User head -> how many samples it was fitted from (a copy)."""
        with self._lock:
            return dict(self._user)

    def over_limits(self) -> str | None:
        """What the user heads on disk go over (heads saved under other limits), or None. They are kept."""
        with self._lock:
            count, size = len(self._user), sum(self._bytes.values())
        over = []
        if self.max_heads is not None and count > self.max_heads:
            over.append(f"{count} heads (limit {self.max_heads})")
        if self.max_bytes is not None and size > self.max_bytes:
            over.append(f"{size} bytes (limit {self.max_bytes})")
        return " and ".join(over) or None

    def is_bundled(self, name: str) -> bool:
        return name in self.bundled

    def shots(self, name: str) -> int:
        """How many samples the user head `name` was fitted from; 0 for bundled and unknown heads."""
        with self._lock:
            return self._user.get(name, 0)

    def load(self) -> Iterator[tuple[str, SemanticHead]]:
        """(name, head) for every user head, by name."""
        return load_heads(self.folder)

    # ---- rules --------------------------------------------------------------------------

    def name_problem(self, name: str) -> str | None:
        """Why `name` cannot name a new user head ("name: ..."), or None when it can."""
        if not name:
            return "name: missing; give the new head a name"
        if not HEAD_NAME.fullmatch(name):
            return (f"name: {name[:80]!r} is not a valid head name; use 1 to 64 of a-z, 0-9, '_' and '-', "
                    f"starting with a letter or digit")
        if name == SEGMENTER:
            return f"name: {SEGMENTER!r} is reserved for the pixel-space segmenter; choose another name"
        if name in self.bundled:
            return f"name: {name!r} is a bundled head and cannot be replaced; choose another name"
        return None

    def check_name(self, name: str) -> None:
        """ValueError with `name_problem`'s message when there is one."""
        problem = self.name_problem(name)
        if problem:
            raise ValueError(problem)

    @contextmanager
    def reserve(self, name: str, replace: bool) -> Iterator[None]:
        """Hold `name` while its head is fitted and saved: HeadExists when another fit holds it, or when
        a head of that name exists and `replace` is false; HeadLimit when a new name would go over
        `max_heads` (fits of new names count) or the other user heads fill `max_bytes` already.
        Two fits cannot both take a name."""
        with self._lock:
            if name in self._fitting:
                raise HeadExists(f"name: a head named {name!r} is being fitted now")
            if (name in self.bundled or name in self._user) and not replace:
                raise HeadExists(f"name: a head named {name!r} exists; set replace to overwrite it")
            count = len(self._user) + sum(1 for n in self._fitting if n not in self._user)
            if self.max_heads is not None and name not in self._user and count >= self.max_heads:
                raise HeadLimit(f"heads: the server is at its limit of {self.max_heads} user heads "
                                f"(--max-user-heads); {_FREE}")
            others = sum(self._bytes.values()) - self._bytes.get(name, 0)
            if self.max_bytes is not None and others >= self.max_bytes:
                raise HeadLimit(f"heads: the other user heads take {others} bytes, the server's limit is "
                                f"{self.max_bytes} bytes (--max-heads-bytes); {_FREE}")
            self._fitting.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._fitting.discard(name)

    # ---- saving -------------------------------------------------------------------------

    def save(self, name: str, head: SemanticHead, training: dict | None = None) -> Path:
        """Write `head` to folder/<name>/ (checkpoint + `training`, whose "shots" is remembered), replacing
        the head of that name; ValueError for a name `check_name` refuses, HeadLimit (nothing written)
        when it would take the user heads over `max_bytes`. Call it inside `reserve`."""
        self.check_name(name)
        path, staging, old = self.folder / name, self.folder / f".{name}.saving", self.folder / f".{name}.old"
        shutil.rmtree(staging, ignore_errors=True)
        save_checkpoint(staging, head, head.config, training=training)
        size = folder_bytes(staging)
        with self._lock:  # the check and the move together: two saves cannot both take the last room
            others = sum(self._bytes.values()) - self._bytes.get(name, 0)
            if self.max_bytes is not None and others + size > self.max_bytes:
                shutil.rmtree(staging, ignore_errors=True)
                raise HeadLimit(f"heads: head {name!r} takes {size} bytes and the other user heads {others}, over "
                                f"the server's limit of {self.max_bytes} bytes (--max-heads-bytes); {_FREE}")
            shutil.rmtree(old, ignore_errors=True)
            if path.exists():
                path.replace(old)
            staging.replace(path)
            shutil.rmtree(old, ignore_errors=True)
            self._user[name] = int((training or {}).get("shots", 0))
            self._bytes[name] = size
        return path
