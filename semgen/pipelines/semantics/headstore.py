"""Heads on disk: the bundle's heads (<models>/heads/<name>/) and the heads users fit while serving,
saved one checkpoint folder per head in a folder of their own, beside the bundle, never in it.

`HeadStore` owns the user folder and the rules for names: the shape of a name, the reserved
segmenter name, bundled heads that cannot be replaced, and a user head that is replaced only when
asked and never while it is being fitted. It is thread-safe (fits run on job threads)."""

from __future__ import annotations

import re
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


def load_heads(folder: str | Path) -> Iterator[tuple[str, SemanticHead]]:
    """(name, head) for every checkpoint in folder/<name>/, by name; nothing when there is no folder."""
    for path in sorted(Path(folder).glob("*/config.json")):
        yield path.parent.name, load_checkpoint(path.parent)


class HeadStore:
    """User heads in `folder`, beside the `bundled` head names; `shots`: user head -> samples it was fitted from."""

    def __init__(self, folder: str | Path, bundled: Iterable[str] = (), shots: dict[str, int] | None = None):
        self.folder = Path(folder)
        self.bundled = frozenset(bundled)  # the bundle's heads that no user head replaced
        self._user = dict(shots or {})
        self._fitting: set[str] = set()  # names being fitted now
        self._lock = threading.Lock()  # fits run on job threads

    @classmethod
    def open(cls, folder: str | Path, models_dir: str | Path | None = None) -> "HeadStore":
        """The user heads saved in `folder` and the heads of the bundle in `models_dir`. A user head with
        a bundled head's name replaced it (SemanticsPipeline.from_dir loads user heads last)."""
        user = {p.parent.name: int(read_config(p.parent).get("training", {}).get("shots", 0))
                for p in Path(folder).glob("*/config.json")}
        bundle = {p.parent.name for p in (Path(models_dir) / "heads").glob("*/config.json")} if models_dir else set()
        return cls(folder, bundle - set(user), user)

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
        a head of that name exists and `replace` is false. Two fits cannot both take a name."""
        with self._lock:
            if name in self._fitting:
                raise HeadExists(f"name: a head named {name!r} is being fitted now")
            if (name in self.bundled or name in self._user) and not replace:
                raise HeadExists(f"name: a head named {name!r} exists; set replace to overwrite it")
            self._fitting.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._fitting.discard(name)

    # ---- saving -------------------------------------------------------------------------

    def save(self, name: str, head: SemanticHead, training: dict | None = None) -> Path:
        """Write `head` to folder/<name>/ (checkpoint + `training`, whose "shots" is remembered);
        ValueError for a name `check_name` refuses. Call it inside `reserve`."""
        self.check_name(name)
        path = self.folder / name
        save_checkpoint(path, head, head.config, training=training)
        with self._lock:
            self._user[name] = int((training or {}).get("shots", 0))
        return path
