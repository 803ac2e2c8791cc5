"""The bundle that travels with a Ray deployment (serving/ray/package.py): packed once, unpacked once per node's
cache under a key of its contents, and the same bundle and export there as at the gateway."""

import os
from pathlib import Path

import pytest

from export.onnx import ensure_exported
from random_bundles import make_random_bundle, make_random_semantics_bundle
from semgen.bundle import Bundle
from serving.ray.package import materialize, pack_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    models = make_random_semantics_bundle(make_random_bundle(root / "models", image_size=32), image_size=32)
    return models, ensure_exported(models, root / "onnx")


def test_a_node_unpacks_the_bundle_once_and_opens_it_as_the_gateway_does(bundle, tmp_path):
    models, export = bundle
    key, blob = pack_bundle(models, export)
    fetches = []

    def fetch() -> bytes:
        fetches.append(1)
        return blob

    folder, fetched = materialize(key, fetch, tmp_path / "cache")
    again, fetched_again = materialize(key, fetch, tmp_path / "cache")  # another replica on the node
    assert (folder, fetched, fetched_again, len(fetches)) == (again, True, False, 1)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]  # nothing half-unpacked left beside it
    copy = Bundle(folder / "models")
    assert copy.fingerprint() == Bundle(models).fingerprint()
    assert copy.exported_onnx(folder / "onnx") == folder / "onnx" / export.name  # the export opens from the copy
    assert sorted(p.name for p in (folder / "onnx" / export.name).glob("*.onnx")) == sorted(
        p.name for p in Path(export).glob("*.onnx"))


def test_the_key_follows_the_weights_and_the_export_is_optional(bundle, tmp_path):
    models, export = bundle
    key, _ = pack_bundle(models, export)
    assert pack_bundle(models, export)[0] == key  # packing again: the same key
    bare_key, bare = pack_bundle(models)  # --runtime torch: no export
    folder, _ = materialize(bare_key, lambda: bare, tmp_path / "cache")
    assert bare_key != key and not (folder / "onnx").exists() and (folder / "models" / "stylegan").is_dir()
    weights = next((models / "stylegan").glob("*.safetensors"))
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of one weight
        assert pack_bundle(models, export)[0] != key
    finally:
        weights.write_bytes(original)


def test_a_replica_takes_a_heads_folder_of_its_own_and_removes_those_of_replicas_gone(tmp_path):
    """Folders named by host and pid: a dead replica's on this host is removed, a live one's and another host's
    (a cache on a shared disk) are kept."""
    import socket
    import subprocess
    import sys

    from serving.ray.heads import own_heads_folder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = tmp_path / f"heads-{host}-{gone.pid}-abc"
    live = tmp_path / f"heads-{host}-1-def"  # pid 1 is always alive
    elsewhere = tmp_path / f"heads-other.host-{gone.pid}-ghi"
    for folder in (dead, live, elsewhere):
        (folder / "mine").mkdir(parents=True)
    mine = own_heads_folder(tmp_path)
    assert mine.is_dir() and mine.name.startswith(f"heads-{host}-{os.getpid()}-") and not any(mine.iterdir())
    assert not dead.exists() and live.is_dir() and elsewhere.is_dir()
    assert own_heads_folder(tmp_path) != mine and mine.is_dir()  # this process lives: its folder stays
