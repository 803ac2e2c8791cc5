"""End to end: the server as a subprocess on a tiny random bundle, called over gRPC.

The server is started once for the module; the last test stops it with SIGINT.
"""

import io
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servingkit import GENERATE_METHOD, free_port, png_bytes

from serving.pyramid.client import SemgenClient
from serving.core.healthcheck import check as health_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_SIZE = 32
MAX_IMAGE_BYTES = 100_000
MAX_IMAGE_PIXELS = 1_000_000
STARTUP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from random_bundles import make_random_bundle

    bundle = make_random_bundle(tmp_path_factory.mktemp("bundle"), image_size=IMAGE_SIZE)
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    onnx = tmp_path_factory.mktemp("onnx")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # the build step first, as `make serve` runs it; `python -m semgen_cli` is what the `semgen` script runs
    subprocess.run([sys.executable, "-m", "semgen_cli", "export", "onnx", "--models", str(bundle), "--cache", str(onnx)],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    command = [sys.executable, "-m", "semgen_cli", "serve", "--models", str(bundle), "--onnx-dir", str(onnx),
               "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(free_port()), "--device", "cpu",
               "--max-image-bytes", str(MAX_IMAGE_BYTES), "--max-image-pixels", str(MAX_IMAGE_PIXELS),
               "--grace-seconds", "5"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while health_check(address, timeout=1) != "SERVING":
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not become SERVING:\n{log_path.read_text()}")
        time.sleep(0.2)
    client = SemgenClient(address, timeout=30)
    yield type("Server", (), dict(proc=proc, address=address, client=client, log=log_path,
                                  metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"))
    client.close()
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def generate(server, **fields):
    return server.client.generate_response(**{
        "image_bytes": png_bytes(48, 40, (30, 120, 200)), "level": "conv3", "num_samples": 3, "seed": 11, **fields})


def requests_total(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "semgen_requests_total" and sample.labels["method"] == GENERATE_METHOD[1:]:
                counts[sample.labels["code"]] = sample.value
    return counts


def test_prints_both_addresses(server):
    log = server.log.read_text()
    assert f"gRPC listening on {server.address}" in log
    assert f"metrics on {server.metrics_url}" in log


def test_generate_returns_pngs_at_model_size(server):
    reply = generate(server)
    assert (len(reply.images), reply.width, reply.height, reply.level) == (3, IMAGE_SIZE, IMAGE_SIZE, "conv3")
    for data in reply.images:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (IMAGE_SIZE, IMAGE_SIZE))
    assert reply.class_name and 0 <= reply.class_index < 8


def test_same_seed_same_bytes_other_seed_other_bytes(server):
    first = generate(server, seed=5).images
    assert generate(server, seed=5).images == first
    assert generate(server, seed=6).images != first
    assert len(set(first)) == 3  # samples within one request differ too


def test_jpeg_reference_and_class_override(server):
    jpeg = png_bytes(64, 50, (250, 200, 20), fmt="JPEG")
    by_index = generate(server, image_bytes=jpeg, level="fc8", num_samples=1, class_index=4)
    by_name = server.client.generate_response(jpeg, "fc8", 1, 11, class_name=by_index.class_name)
    assert by_index.class_index == 4 and by_name.class_index == 4
    assert by_name.images == by_index.images


PNG_30 = png_bytes(30, 30)
BAD_INPUTS = {
    "empty-image": (dict(image_bytes=b""), "image: empty"),
    "gif-image": (dict(image_bytes=png_bytes(30, 30, fmt="GIF")), "image: not a PNG or JPEG image"),
    "truncated-image": (dict(image_bytes=PNG_30[: len(PNG_30) // 2]), "image: could not decode PNG data"),
    "image-over-max-bytes": (dict(image_bytes=PNG_30 + bytes(MAX_IMAGE_BYTES)),
                             f"image: {len(PNG_30) + MAX_IMAGE_BYTES} bytes is over the limit of {MAX_IMAGE_BYTES}"),
    "image-over-max-pixels": (dict(image_bytes=png_bytes(1001, 1000)),
                              "image: 1001x1000 = 1001000 pixels is over the limit of 1000000 pixels"),
    "image-too-small": (dict(image_bytes=png_bytes(4, 4)), "image: too small"),  # the pipeline's own check
    "unknown-level": (dict(level="conv9"), "level: unknown level 'conv9'; expected one of conv1"),
    "missing-level": (dict(level=""), "level: missing"),
    "negative-samples": (dict(num_samples=-1), "num_samples: must be between 1 and 16 (0 = 1), got -1"),
    "too-many-samples": (dict(num_samples=17), "num_samples: must be between 1 and 16 (0 = 1), got 17"),
    "class-index-out-of-range": (dict(class_index=8), "class_index: 8 is out of range; the model has 8 classes"),
    "unknown-class-name": (dict(class_name="unicorn"), "class_name: unknown class 'unicorn'"),
}


@pytest.mark.parametrize("fields, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_invalid_argument_naming_the_field(server, fields, message):
    with pytest.raises(grpc.RpcError) as e:
        generate(server, **fields)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert health_check(server.address) == "SERVING"


def test_malformed_request_bytes_are_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(GENERATE_METHOD, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\x0a\xff\xff", timeout=10)  # field 1 with a length running past the end
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("request: 3 bytes do not parse as a semgen.v1.GenerateRequest")
    assert health_check(server.address) == "SERVING"


def test_metrics_count_calls_by_code(server):
    before = requests_total(server)
    generate(server, num_samples=1)
    with pytest.raises(grpc.RpcError):
        generate(server, level="nope")
    expected = {"OK": before.get("OK", 0) + 1, "INVALID_ARGUMENT": before.get("INVALID_ARGUMENT", 0) + 1}
    # An aborted RPC's status reaches the client before the server's interceptor has recorded
    # it, so give the server a moment to count (bounded).
    deadline = time.monotonic() + 5
    counted = lambda: {code: requests_total(server).get(code, 0) for code in expected}  # noqa: E731
    while (after := counted()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after == expected


def decoded(reply) -> list:
    return [np.asarray(Image.open(io.BytesIO(png))) for png in reply.images]


def test_generate_with_level_masks(server):
    left = np.zeros((40, 48), np.float32)
    left[:, :24] = 1
    reply = generate(server, level=None, level_masks={"conv1": left, "conv4": None}, num_samples=2)
    assert reply.level == "conv4" and [im.shape for im in decoded(reply)] == [(IMAGE_SIZE, IMAGE_SIZE, 3)] * 2
    whole = generate(server, level=None, level_masks={"conv1": None, "conv4": None}, num_samples=2)
    assert reply.images != whole.images  # the mask changed what the generator saw


def test_repaint_and_composite_over_grpc(server):
    image = png_bytes(48, 40, (30, 120, 200))
    region = np.zeros((40, 48), np.float32)
    region[10:30, 12:36] = 1
    repainted = [server.client.repaint(image, region, "conv5", num_samples=2, seed=seed) for seed in (1, 1, 2)]
    assert repainted[0].images == repainted[1].images != repainted[2].images
    assert [im.shape for im in decoded(repainted[0])] == [(IMAGE_SIZE, IMAGE_SIZE, 3)] * 2
    composite = server.client.composite(image, png_bytes(10, 10, (250, 250, 0)), (4, 4, 20, 16), "conv4",
                                        num_samples=3, seed=5, class_name="forest")
    assert (len(composite.images), composite.class_name, composite.level) == (3, "forest", "conv4")
    with pytest.raises(grpc.RpcError) as e:
        server.client.composite(image, image, (40, 0, 20, 20), "conv4")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("box:")
    with pytest.raises(grpc.RpcError) as e:
        server.client.repaint(image, np.ones((8, 8)), "conv5")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and e.value.details().startswith("region: size 8x8")
    assert health_check(server.address) == "SERVING"


def test_unnatural_reference_over_grpc(server):
    from semgen.data.scenes import render_scene

    buf = io.BytesIO()
    Image.fromarray(render_scene(5, 64, rendition="line_drawing").image).save(buf, format="PNG")
    reply = server.client.generate_response(buf.getvalue(), "conv5", num_samples=2, seed=3)
    assert [im.shape for im in decoded(reply)] == [(IMAGE_SIZE, IMAGE_SIZE, 3)] * 2 and reply.level == "conv5"


def test_client_command_writes_pngs(server, tmp_path):
    (tmp_path / "ref.png").write_bytes(png_bytes(48, 40, (30, 120, 200)))
    mask = np.zeros((40, 48), np.uint8)
    mask[5:20, 5:20] = 255
    Image.fromarray(mask).save(tmp_path / "region.png")
    base = [sys.executable, "-m", "semgen_cli", "client", "pyramid"]
    common = ["--address", server.address, "--image", str(tmp_path / "ref.png"), "--num-samples", "2"]
    for op, extra in (("generate", ["--mask", "conv2=" + str(tmp_path / "region.png"), "--mask", "fc8"]),
                      ("repaint", ["--region", str(tmp_path / "region.png")]),
                      ("composite", ["--object", str(tmp_path / "ref.png"), "--box", "1,2,20,10"])):
        out = tmp_path / op
        done = subprocess.run(base + [op] + common + extra + ["--out", str(out)], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert len(list(out.glob("*.png"))) == 2 and "2 images 32x32" in done.stdout
    bad = subprocess.run(base + ["repaint"] + common + ["--region", str(tmp_path / "ref.png"), "--level", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "INVALID_ARGUMENT: level: unknown level 'x'" in bad.stderr


def test_client_health_and_the_address_from_the_environment(server):
    env = {**os.environ, "SEMGEN_ADDRESS": server.address}
    done = subprocess.run([sys.executable, "-m", "semgen_cli", "client", "health"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split() for line in done.stdout.splitlines())
    # the random bundle has the pyramid only: the other services are not served
    assert lines["server"] == "SERVING" and lines["semgen.v1.PyramidService"] == "SERVING"
    assert lines["semgen.v1.SemanticsService"] == "NOT_SERVING" and lines["inference.GRPCInferenceService"] == "SERVING"
    wrong = subprocess.run([sys.executable, "-m", "semgen_cli", "client", "health", "--timeout", "1"], cwd=ROOT,
                           env={**env, "SEMGEN_ADDRESS": "127.0.0.1:1"}, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "server                           UNAVAILABLE" in wrong.stdout


def test_sigint_stops_cleanly(server):  # keep last: it stops the module's server
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=30) == 0
    log = server.log.read_text()
    assert "shutting down" in log and log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def test_a_server_without_its_export_names_the_command_to_run(tmp_path):
    from random_bundles import make_random_bundle

    bundle = make_random_bundle(tmp_path / "bundle", image_size=IMAGE_SIZE)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "semgen_cli", "serve", "--models", str(bundle), "--onnx-dir",
                           str(tmp_path / "onnx"), "--port", "0", "--metrics-port", "0", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"run `semgen export onnx --models {bundle} --cache {tmp_path / 'onnx'}` first" in done.stderr
    assert not (tmp_path / "onnx").exists()  # the server opened nothing and made nothing
