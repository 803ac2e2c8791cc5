"""`semgen import stylegan2` (export/import_stylegan2.py): NVlabs' own fixture imported, exported and served gives
their images; a code-running pickle and flags that do not fit write nothing."""

import json
import os
import pickle
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from semgen.data.loaders import to_uint8
import semgen_cli
from serving.bench.process import export_onnx, server_process
from serving.core.images import pil_images
from serving.higan.client import HiganClient
from serving.semantics.client import SemanticsClient, job_result, mask_array

FIXTURES = Path(__file__).resolve().parents[1] / "semgen" / "fixtures" / "stylegan2"


def main(argv: list[str]) -> int:
    """`semgen ARGV` in this process: its exit code."""
    try:
        semgen_cli.main(argv)
    except SystemExit as e:
        return e.code
    return 0


def test_the_nvlabs_fixture_imported_exported_and_served_gives_nvlabs_images(tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["format"], result["img_resolution"], result["num_ws"]) == ("nvlabs", 64, 10)
    assert json.loads((out / "stylegan" / "config.json").read_text())["class"] == "StyleGAN2Generator"
    ref = np.load(FIXTURES / "G64_ref.npz")
    # G(z, psi 0.7) is synthesis of NVlabs' w+ truncated towards the imported w_avg
    w_avg = load_file(out / "stylegan" / "model.safetensors")["mapping.w_avg"]
    ws = w_avg + 0.7 * (ref["ws"] - w_avg)
    export_onnx(str(out), str(tmp_path / "onnx"))
    with tempfile.TemporaryDirectory() as heads, server_process(
            ["--models", str(out), "--onnx-dir", str(tmp_path / "onnx"), "--heads-dir", heads, "--log-level",
             "WARNING"]) as server, SemanticsClient(server.address, timeout=120) as client:
        reply = client.sample(latents=ws)
        seeded = client.sample(seeds=[1, 2], truncation_psi=0.7)
        # the linear-semantics RPCs on the imported generator: a few-shot head of the user's own masks
        halves = np.zeros((4, 64, 64), np.uint8)
        halves[:, :32] = 1
        info = client.fit_head("halves", ws, list(halves), ["bottom", "top"], seed=1, iterations=50)
        segmented = np.stack([mask_array(png) for png in client.segment(ws, "halves").masks])
        conditional = job_result(client.sample_conditional(halves[0], head="halves", num_samples=1, n_init=4,
                                                           iterations=2))
        edited = job_result(client.edit(ws[:1], halves[0], head="halves", iterations=2))
        heads = [head.name for head in client.list_heads()]
        with pytest.raises(grpc.RpcError) as missing:
            client.segment(ws, "lse")
        with HiganClient(server.address, timeout=60) as higan:  # no directions imported yet
            attributes = higan.list_attributes()
            with pytest.raises(grpc.RpcError) as no_directions:
                higan.manipulate([("smile", 1.0)], seeds=[0])
    served = np.stack([np.asarray(image) for image in pil_images(reply.images)])
    want = to_uint8(torch.from_numpy(ref["img_psi07_const"]))
    assert served.shape == (4, 64, 64, 3) and np.abs(served.astype(int) - want.astype(int)).max() <= 1
    assert tuple(seeded.latents.shape) == (2, 10, 64) and len(seeded.images) == 2
    assert (info.name, info.shots, heads) == ("halves", 4, ["halves"]) and np.mean(segmented == halves) > 0.9
    assert len(conditional.images) == 1 and len(edited.images) == 1
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "known: halves" in missing.value.details()
    assert (list(attributes.attributes), attributes.num_layers) == ([], 10)
    assert no_directions.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "`semgen import direction NAME FILE.npy --models DIR`" in no_directions.value.details()


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_code_running_pickle_and_misfit_flags_write_nothing(tmp_path, capsys):
    evil, marker, out = tmp_path / "evil.pkl", tmp_path / "ran", tmp_path / "bundle"
    evil.write_bytes(b"\x80\x04" + pickle.dumps({"G_ema": RunsCode(marker)})[2:])
    assert main(["import", "stylegan2", str(evil), "--out", str(out), "--format", "nvlabs"]) == 2
    assert "posix.system: not allowed in a network pickle" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()
    # the port's format needs its size; a wrong one names the first tensor that does not fit
    port = tmp_path / "g.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(8, 8)}}, port)
    assert main(["import", "stylegan2", str(port), "--out", str(out)]) == 2
    assert "size: the port's checkpoints do not record their resolution" in capsys.readouterr().err
    assert main(["import", "stylegan2", str(port), "--out", str(out), "--size", "8", "--style-dim", "8"]) == 2
    assert "does not match the port's layout for size 8" in capsys.readouterr().err
    assert not (out / "stylegan").exists() and not any(out.glob(".stylegan-import-*"))
    # an existing generator stays unless --replace
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out)]) == 0
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out)]) == 2
    assert "exists; give --replace" in capsys.readouterr().err
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out), "--replace"]) == 0


def test_a_class_conditional_generator_is_refused_with_the_reason(tmp_path, capsys, monkeypatch):
    import export.import_stylegan2 as importer
    from semgen.nvlabs_pickle import generator_from_pickle

    def conditional(src, network):  # the fixture, as if NVlabs had recorded c_dim 10
        model, config = generator_from_pickle(src, network)
        return model, {**config, "c_dim": 10}

    monkeypatch.setattr(importer, "generator_from_pickle", conditional)
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(tmp_path / "b")]) == 2
    assert "G_ema is class-conditional (10 classes); semgen's requests carry no class label" in capsys.readouterr().err
    assert not (tmp_path / "b" / "stylegan").exists()


def test_an_imported_generator_exports_to_onnx_with_parity_at_any_batch(tmp_path):
    """mapping and synthesis + a head as ONNX graphs: NVlabs' per-sample modulation is computed without batch-sized
    groups, so the graph traced at one batch takes another."""
    from export.onnx import PARITY_TOLERANCE
    from export.onnx import export_onnx as export_graphs
    from semgen.checkpoints import load_checkpoint, save_checkpoint
    from semgen.networks.heads import HEAD_KINDS
    from semgen.runtime.onnx import ort_session

    out = tmp_path / "bundle"
    assert main(["import", "stylegan2", str(FIXTURES / "G64.pkl"), "--out", str(out)]) == 0
    g = load_checkpoint(out / "stylegan")
    torch.manual_seed(0)
    head = HEAD_KINDS["lse"](g.layer_channels(), 3, ("a", "b", "c"))  # a head the user trained for it
    save_checkpoint(out / "heads" / "lse", head, head.config)
    report = export_graphs(str(out), str(tmp_path / "onnx"))
    for name in ("mapping", "synthesis", "synthesis_lse"):
        assert report[f"{name}.parity"] and report[f"{name}.max_abs_diff"] <= PARITY_TOLERANCE
    ws = torch.from_numpy(np.load(FIXTURES / "G64_ref.npz")["ws"][:3]).repeat(2, 1, 1)[:5]  # batch 5
    image, logits = ort_session(report["synthesis_lse.path"], threads=1).run(None, {"ws": ws.numpy()})
    with torch.no_grad():
        want, features = g.synthesis(ws, return_features=True)
        want_logits = head(features, 64)
    assert image.shape == (5, 3, 64, 64) and np.abs(image - want.numpy()).max() <= 1e-4
    assert np.abs(logits - want_logits.numpy()).max() <= 1e-4
