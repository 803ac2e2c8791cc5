"""A client we did not write: tritonclient (the common Open Inference Protocol / KServe v2 client) against a semgen
server. Run in its own process, from its own venv (.venv-oip: tritonclient wants protobuf < 7, the server runs 7,
and its definitions of package `inference` would clash with the server's stubs in one process):

    .venv-oip/bin/python oip_client.py grpc|http HOST:PORT INPUTS.npz OUT_DIR

INPUTS.npz holds the pyramid graph's inputs (their own names) and `classifier.image`. Writes OUT_DIR/outputs.npz
(pyramid.image, classifier.<level>) and OUT_DIR/results.json (health, metadata, the errors bad calls got).
"""

import json
import sys
from pathlib import Path

import numpy as np


def main(protocol: str, url: str, inputs_path: str, out_dir: str) -> None:
    if protocol == "grpc":
        import tritonclient.grpc as client
    else:
        import tritonclient.http as client
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    triton = client.InferenceServerClient(url)
    arrays = dict(np.load(inputs_path))
    results, outputs = {}, {}

    def tensor(name, array, binary=True):
        t = client.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if protocol == "http":
            t.set_data_from_numpy(array, binary_data=binary)
        else:
            t.set_data_from_numpy(array)
        return t

    def requested(name, binary=True):
        return client.InferRequestedOutput(name, binary_data=binary) if protocol == "http" else \
            client.InferRequestedOutput(name)

    results["live"] = triton.is_server_live()
    results["ready"] = triton.is_server_ready()
    results["server"] = _plain(triton.get_server_metadata(), protocol)
    results["pyramid_metadata"] = _plain(triton.get_model_metadata("pyramid"), protocol)
    results["pyramid_ready"] = triton.is_model_ready("pyramid")
    results["unknown_ready"] = triton.is_model_ready("no-such-model")

    pyramid = {k: v for k, v in arrays.items() if not k.startswith("classifier.")}
    reply = triton.infer("pyramid", [tensor(k, v) for k, v in pyramid.items()], outputs=[requested("image")])
    outputs["pyramid.image"] = reply.as_numpy("image")
    results["pyramid_version"] = reply.get_response(as_json=True)["model_version"] if protocol == "grpc" else \
        reply.get_response()["model_version"]
    # the classifier with JSON tensors both ways on HTTP (plain typed contents are not offered by tritonclient.grpc)
    image = arrays["classifier.image"]
    reply = triton.infer("classifier", [tensor("image", image, binary=False)])
    for level in ("conv1", "conv5", "fc7", "fc8"):
        outputs[f"classifier.{level}"] = reply.as_numpy(level)

    bad = {"wrong_shape": ("pyramid", {**pyramid, "z": pyramid["z"][:, :3]}),
           "wrong_datatype": ("pyramid", {**pyramid, "z": pyramid["z"].astype(np.float64)}),
           "missing_input": ("pyramid", {k: v for k, v in pyramid.items() if k != "labels"}),
           "unknown_model": ("no-such-model", {"image": image})}
    results["errors"] = {}
    for case, (model, feeds) in bad.items():
        try:
            triton.infer(model, [tensor(k, v) for k, v in feeds.items()])
            results["errors"][case] = None
        except InferenceServerException as e:
            results["errors"][case] = {"status": str(e.status()), "message": e.message()}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "outputs.npz", **outputs)
    (out / "results.json").write_text(json.dumps(results, indent=1))


def _plain(reply, protocol):
    if protocol == "grpc":
        from google.protobuf import json_format

        return json_format.MessageToDict(reply, preserving_proto_field_name=True)
    return reply


if __name__ == "__main__":
    main(*sys.argv[1:])
