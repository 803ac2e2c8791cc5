"""The model bundle: one checkpoint folder per network, what it can serve, and its fingerprints.

    <models>/classifier/   the feature extractor (Classifier)
    <models>/pyramid/      the EMA pyramid generator (PyramidGenerator)
    <models>/stylegan/     the layer-wise latent generator (StyleGenerator)
    <models>/segmenter/    the supervisor segmenter; <models>/heads/<name>/ semantic heads
    <models>/attributes/   HiGAN's attribute predictor; <models>/boundaries/ its boundaries

Exports are made from a bundle and kept under its fingerprint, so a server opens exactly the graphs
and archives of the weights it serves: `<onnx cache>/<fingerprint>/` (semgen export onnx --cache) and
`<store>/<key>/` (semgen export mar --store). No torch here: clients and the server import it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path


class Service(str, enum.Enum):
    PYRAMID = "pyramid"
    SEMANTICS = "semantics"
    IMAGINE = "imagine"
    HIGAN = "higan"


# the folders a service needs; IMAGINE may also run on a classifier given outside the bundle. The parts a call
# needs beyond these (a head, the segmenter, directions) are checked by the call: MissingPart.
SERVICE_FOLDERS = {
    Service.PYRAMID: ("classifier", "pyramid"),
    Service.SEMANTICS: ("stylegan",),
    Service.IMAGINE: ("classifier",),
    Service.HIGAN: ("stylegan",),
}
ONNX_HEAD = "lse"  # the head fused into the exported synthesis graph
ONNX_FOLDERS = ("classifier", "pyramid", "stylegan", f"heads/{ONNX_HEAD}")  # what the exported graphs are made of
ONNX_EXPORT_VERSION = 2  # which graphs an export holds; 2: + synthesis.onnx (the generator alone). Older: export again
# TorchServe archive -> (bundle folders it packs, ONNX graphs it runs, batched by TorchServe?)
TORCHSERVE_MODELS = {
    "pyramid": (("classifier", "pyramid"), ("classifier", "pyramid"), True),
    "semantics": (("stylegan", "segmenter", "heads"), ("mapping", "synthesis", f"synthesis_{ONNX_HEAD}"), True),
    "semantics_jobs": (("stylegan", "segmenter", "heads"), ("mapping", "synthesis", f"synthesis_{ONNX_HEAD}"), False),
    "imagine": (("classifier",), (), False),
}


def torchserve_settings(batch_size: int, max_batch_delay_ms: float, ort_threads: int) -> dict:
    """The settings a TorchServe store is built for (and keyed by), typed the same by export and server."""
    return {"batch_size": int(batch_size), "max_batch_delay_ms": float(max_batch_delay_ms),
            "ort_threads": int(ort_threads)}


class MissingPart(RuntimeError):
    """A call needs a part the bundle lacks (the segmenter, any head, directions, attribute predictors); the
    message starts with the field, names the part and how to add it. Servers answer FAILED_PRECONDITION."""


SEGMENTER = "segmenter"  # the predictor that reads pixels (every other predictor is a named head)


def unknown_head(name: str, heads, segmenter: bool) -> Exception:
    """The error for a head `name` that the bundle's `heads` (names) and segmenter do not have: MissingPart where
    the bundle has no such part at all, else a KeyError "head: ..." naming the known ones (NOT_FOUND)."""
    if name == SEGMENTER and not segmenter:
        return MissingPart(f"head: this bundle has no segmenter/ (the predictor that reads pixels); train one for the "
                           f"scene world with `semgen train segmenter`, or fit a head of your own masks with FitHead")
    if not heads and not segmenter:
        return MissingPart(f"head: this bundle has no heads and no segmenter, so there is no {name!r}; fit one of your "
                           f"own masks with FitHead (a few masks at the generator's size), or train one with "
                           f"`semgen train heads`")
    known = sorted(heads) + ([SEGMENTER] if segmenter else [])
    return KeyError(f"head: no head named {name!r}; known: {', '.join(known)}")


def no_directions(field: str = "attribute") -> MissingPart:
    """HiGAN edits on a bundle without boundaries/."""
    return MissingPart(f"{field}: this bundle has no directions (boundaries/); import one with `semgen import "
                       f"direction NAME FILE.npy --models DIR`, or train them with `semgen train boundaries`")


class ExportMissing(FileNotFoundError):
    """A server was asked to open an export that was not built (or was built from other weights)."""


class Bundle:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._fingerprints: dict[tuple[str, ...], str] = {}  # hashing the weights once per Bundle

    def __str__(self) -> str:
        return str(self.root)

    def has(self, *folders: str) -> bool:
        return all((self.root / f).exists() for f in folders)

    def missing(self, service: Service) -> list[str]:
        return [f"{f}/" for f in SERVICE_FOLDERS[service] if not (self.root / f).exists()]

    def serves(self, service: Service) -> bool:
        return not self.missing(service)

    def check(self) -> None:
        """Raise if the bundle can serve nothing at all."""
        if not any(self.serves(s) for s in (Service.PYRAMID, Service.SEMANTICS, Service.IMAGINE)):
            raise FileNotFoundError(f"{self.root} has none of pyramid/, stylegan/ and classifier/")

    def fingerprint(self, folders: tuple[str, ...] = ONNX_FOLDERS) -> str:
        """sha256 over the files of `folders` (default: what the exported graphs are made of)."""
        if folders not in self._fingerprints:
            digest = hashlib.sha256()
            for folder in folders:
                for path in sorted(p for p in (self.root / folder).rglob("*") if p.is_file()):
                    digest.update(str(path.relative_to(self.root)).encode())
                    digest.update(path.read_bytes())
            self._fingerprints[folders] = digest.hexdigest()
        return self._fingerprints[folders]

    # ---- exports ------------------------------------------------------------------------

    def onnx_dir(self, cache: str | Path) -> Path:
        """Where `semgen export onnx --cache CACHE` puts this bundle's graphs."""
        return Path(cache) / self.fingerprint()[:16]

    def onnx_up_to_date(self, cache: str | Path) -> bool:
        stamp = self.onnx_dir(cache) / "bundle.json"
        if not stamp.exists():
            return False
        made = json.loads(stamp.read_text())
        return made.get("fingerprint") == self.fingerprint() and made.get("export_version", 1) == ONNX_EXPORT_VERSION

    def exported_onnx(self, cache: str | Path) -> Path:
        """The folder of the bundle's exported graphs; ExportMissing (naming the command) if absent or stale."""
        if not self.onnx_up_to_date(cache):
            raise ExportMissing(f"no ONNX export of {self.root} in {cache} (missing, made from other weights, "
                                f"or by an older semgen); "
                                f"run `semgen export onnx --models {self.root} --cache {cache}` first")
        return self.onnx_dir(cache)

    def mar_store_dir(self, store: str | Path, handler: str | Path, settings: dict) -> Path:
        """Where `semgen export mar --store STORE` puts the archives for this bundle, handler and settings:
        keyed by everything they pack, so a change to any of them gets a new store."""
        folders = tuple(sorted({f for needs, _, _ in TORCHSERVE_MODELS.values() for f in needs}))
        key = hashlib.sha256(json.dumps([self.fingerprint(folders), Path(handler).read_text(),
                                         sorted(settings.items()), ONNX_EXPORT_VERSION]).encode()).hexdigest()
        return Path(store) / key[:16]
