"""semgen.bundle.Bundle: which services a bundle serves, its fingerprint, and where its exports live."""

from __future__ import annotations

import json
import shutil

import pytest

from random_bundles import make_random_bundle, make_random_higan_bundle
from semgen.bundle import ONNX_EXPORT_VERSION, Bundle, ExportMissing, Service, torchserve_settings


@pytest.fixture(scope="module")
def higan_bundle(tmp_path_factory):
    return make_random_higan_bundle(tmp_path_factory.mktemp("higan") / "models", image_size=32)


def test_services_follow_the_folders(higan_bundle, tmp_path):
    assert all(Bundle(higan_bundle).serves(s) for s in (Service.SEMANTICS, Service.IMAGINE, Service.HIGAN))
    pyramid_only = Bundle(make_random_bundle(tmp_path / "pyramid", image_size=32))
    assert pyramid_only.serves(Service.PYRAMID) and not pyramid_only.serves(Service.SEMANTICS)
    assert pyramid_only.missing(Service.HIGAN) == ["stylegan/"]  # directions and predictors: optional parts
    with pytest.raises(FileNotFoundError, match="none of pyramid/, stylegan/ and classifier/"):
        Bundle(tmp_path / "empty").check()


def test_fingerprint_follows_the_weights(higan_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(higan_bundle, copy)
    assert Bundle(copy).fingerprint() == Bundle(higan_bundle).fingerprint()  # the place does not count
    weights = copy / "stylegan" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of one weight
    assert Bundle(copy).fingerprint() != Bundle(higan_bundle).fingerprint()


def test_a_missing_or_stale_export_names_the_command(higan_bundle, tmp_path):
    bundle = Bundle(higan_bundle)
    with pytest.raises(ExportMissing, match=f"run `semgen export onnx --models {higan_bundle} --cache {tmp_path}`"):
        bundle.exported_onnx(tmp_path)
    folder = bundle.onnx_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({"fingerprint": "other weights"}))
    with pytest.raises(ExportMissing):
        bundle.exported_onnx(tmp_path)
    (folder / "bundle.json").write_text(json.dumps({"fingerprint": bundle.fingerprint()}))  # an older export
    with pytest.raises(ExportMissing, match="or by an older semgen"):
        bundle.exported_onnx(tmp_path)
    (folder / "bundle.json").write_text(json.dumps({"fingerprint": bundle.fingerprint(),
                                                    "export_version": ONNX_EXPORT_VERSION}))
    assert bundle.exported_onnx(tmp_path) == folder


def test_the_torchserve_store_is_keyed_by_handler_and_settings(higan_bundle, tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text("one")
    bundle, settings = Bundle(higan_bundle), torchserve_settings(8, 5, 2)
    first = bundle.mar_store_dir(tmp_path / "store", handler, settings)
    assert first == bundle.mar_store_dir(tmp_path / "store", handler, torchserve_settings(8, 5.0, 2))  # 5 == 5.0
    assert first != bundle.mar_store_dir(tmp_path / "store", handler, torchserve_settings(4, 5, 2))
    handler.write_text("two")
    assert first != bundle.mar_store_dir(tmp_path / "store", handler, settings)
