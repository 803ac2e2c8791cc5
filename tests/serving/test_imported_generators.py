"""Every StyleGAN-based RPC on bundles of a StyleGAN2 generator as `semgen import stylegan2` writes them, at 128 and
256 px (64 px: the NVlabs fixture, tests/export/test_import_stylegan2.py), with a direction brought in by
`semgen import direction`: exported, served, and the parts the bundle lacks answered FAILED_PRECONDITION."""

import tempfile

import grpc
import numpy as np
import pytest
import torch

import semgen_cli
from semgen.checkpoints import save_checkpoint
from semgen.networks.stylegan2 import StyleGAN2Generator
from semgen.data.loaders import to_uint8
from serving.bench.catalogue import infer
from serving.bench.process import export_onnx, server_process
from serving.core.protos import OIP_SERVICE, oip_pb2
from serving.core.images import pil_images
from serving.higan.client import HiganClient, frame_latents
from serving.semantics.client import SemanticsClient, job_result, mask_array

W_DIM = 16


def imported_bundle(root, size: int):
    """<root>/stylegan/ holding a random 16-channel StyleGAN2 at `size` px in the importer's layout, and a direction
    "smile" on layers 0-3."""
    torch.manual_seed(size)
    config = dict(z_dim=W_DIM, c_dim=0, w_dim=W_DIM, img_resolution=size, img_channels=3, mapping_layers=2,
                  channel_base=16 * size, channel_max=16)
    save_checkpoint(root / "stylegan", StyleGAN2Generator(**config).eval(), config, training={"format": "test"})
    np.save(root / "smile.npy", np.random.default_rng(size).normal(size=(1, W_DIM)))
    with pytest.raises(SystemExit) as done:
        semgen_cli.main(["import", "direction", "smile", str(root / "smile.npy"), "--models", str(root),
                         "--layers", "0-3"])
    assert done.value.code == 0
    return root


def code_and_details(call) -> tuple:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


@pytest.mark.parametrize("size", [128, 256])
def test_every_stylegan_rpc_answers_on_an_imported_bundle(tmp_path, size):
    models = imported_bundle(tmp_path / "bundle", size)
    export_onnx(str(models), str(tmp_path / "onnx"))
    halves = np.zeros((4, size, size), np.uint8)
    halves[:, : size // 2] = 1  # the user's own masks: top and bottom
    with tempfile.TemporaryDirectory() as heads, server_process(
            ["--models", str(models), "--onnx-dir", str(tmp_path / "onnx"), "--heads-dir", heads, "--log-level",
             "WARNING"]) as server, SemanticsClient(server.address, timeout=120) as client, \
            HiganClient(server.address, timeout=120) as higan:
        sampled = client.sample(seeds=[1, 2, 3, 4], truncation_psi=0.7)
        ws = np.asarray(sampled.latents.values, np.float32).reshape(tuple(sampled.latents.shape))
        no_head = code_and_details(lambda: client.segment(ws, "lse"))
        no_segmenter = code_and_details(lambda: client.segment(ws, "segmenter"))
        info = client.fit_head("halves", ws, list(halves), ["bottom", "top"], seed=1, iterations=40)
        segmented = np.stack([mask_array(png) for png in client.segment(ws, "halves").masks])
        conditional = job_result(client.sample_conditional(halves[0], head="halves", num_samples=1, n_init=4,
                                                           iterations=2))
        edited = job_result(client.edit(ws[:1], halves[0], head="halves", iterations=2))
        heads = [head.name for head in client.list_heads()]
        attributes = higan.list_attributes()
        frames = higan.manipulate([("smile", 2.0)], seeds=[5], sweep=(0, 1))
        with grpc.insecure_channel(server.address) as channel:  # the Open Inference Protocol's plain generator
            synthesis = channel.unary_unary(f"/{OIP_SERVICE}/ModelInfer",
                                            request_serializer=oip_pb2.ModelInferRequest.SerializeToString,
                                            response_deserializer=oip_pb2.ModelInferResponse.FromString)(
                infer("synthesis", "ws", ws[:1]), timeout=60)
    images = np.stack([np.asarray(image) for image in pil_images(sampled.images)])
    assert images.shape == (4, size, size, 3) and images.std() > 1  # 4 images at the generator's size, not blank
    num_ws = 2 * size.bit_length() - 4  # NVlabs: 2 per resolution from 4 px, one more for toRGB at the top
    assert tuple(sampled.latents.shape) == (4, num_ws, W_DIM)
    assert no_head[0] == grpc.StatusCode.FAILED_PRECONDITION and "no heads and no segmenter" in no_head[1]
    assert no_segmenter[0] == grpc.StatusCode.FAILED_PRECONDITION and "semgen train segmenter" in no_segmenter[1]
    assert (info.name, info.shots, heads) == ("halves", 4, ["halves"])
    assert segmented.shape == (4, size, size) and np.mean(segmented == halves) > 0.8
    for result in (conditional, edited):
        assert [np.asarray(image).shape for image in pil_images(result.images)] == [(size, size, 3)]
    (smile,) = attributes.attributes
    assert (smile.name, smile.level, list(smile.default_layers), attributes.num_layers, attributes.image_size) == (
        "smile", "imported", [0, 1, 2, 3], num_ws, size)
    moved = frame_latents(frames)[1] - frame_latents(frames)[0]
    assert np.abs(np.linalg.norm(moved[:4], axis=1) - 2.0 * smile.scale).max() < 1e-3 and not moved[4:].any()
    before, after = (np.asarray(image, int) for image in pil_images([f.image_png for f in frames.frames]))
    assert dict(frames.frames[0].scores) == {} and np.abs(after - before).mean() > 0.5
    (output,) = synthesis.outputs  # w+ -> image, FP32 NCHW in [-1, 1]: Sample's first image before quantising
    assert (output.name, output.datatype, list(output.shape)) == ("image", "FP32", [1, 3, size, size])
    image = np.frombuffer(synthesis.raw_output_contents[0], "<f4").reshape(1, 3, size, size)
    assert np.abs(to_uint8(torch.from_numpy(image.copy()))[0].astype(int) - images[0]).max() <= 1
