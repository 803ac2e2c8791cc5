# semgen GPU serving image: `semgen serve` on 0.0.0.0:50051 (gRPC), :8000 (HTTP: the Open Inference Protocol,
# /healthz, /readyz) and :9464 (/metrics). deploy/compose.yaml runs it with Prometheus and Grafana.
#
#   docker build -t semgen .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 -p 9464:9464 -e SEMGEN_TOKEN="$(cat token)" semgen
#   docker run --gpus all -v /path/to/bundle:/models -v /path/to/secrets:/secrets:ro semgen \
#       semgen serve --models /models --host 0.0.0.0 --device cuda --token-file /secrets/token \
#       --tls-cert /secrets/cert.pem --tls-key /secrets/key.pem     # other models or flags
#
# 0.0.0.0 is not loopback, so the server refuses to start without a token ($SEMGEN_TOKEN or --token-file)
# or TLS (--tls-cert/--tls-key), unless the command says --insecure (README "Security"). The HEALTHCHECK
# needs no token (health is exempt); with TLS, override it to pass --tls-ca (and --tls-server-name if the
# certificate does not name 127.0.0.1).
#
# torch is NOT installed from PyPI here: the CUDA build comes with the base image. pyproject pins
# torch==2.13.0, so the base image must carry torch 2.13.0 (a local tag such as 2.13.0+cu128
# matches the pin). A constraints file pins torch to exactly the base image's build, so if the two
# ever disagree pip fails the build instead of quietly replacing CUDA torch with a CPU wheel.
# To move to another CUDA: --build-arg BASE_IMAGE=pytorch/pytorch:2.13.0-cuda<X.Y>-cudnn9-runtime
# (the image must have Python >= 3.11).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 0. Java 17 for `semgen serve --engine torchserve` (TorchServe's frontend is Java).
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*

# 1. Dependencies only (a cached layer that changes only with pyproject.toml). onnxruntime-gpu
#    replaces the CPU onnxruntime (same module), so the exported graphs run on the CUDA provider.
COPY pyproject.toml ./
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt \
 && pip uninstall -y onnxruntime && pip install -c /tmp/constraints.txt onnxruntime-gpu \
 && python -c "import torch; assert torch.version.cuda, 'the base image torch has no CUDA'"

# 2. The project (editable, so the stubs generated into serving/_generated/ are the ones imported)
#    and the bundled default models in artifacts/.
COPY . .
RUN pip install -c /tmp/constraints.txt --no-deps -e . \
 && python -m serving.build_protos \
 && python -c "from serving.core.protos import pyramid_pb2, semantics_pb2; import semgen_cli" \
 && semgen export onnx --models artifacts --cache var/onnx \
 && semgen export mar --models artifacts --store var/torchserve/store --handler serving/torchserve/handler.py \
      --onnx-cache var/onnx

# 3. Run as a non-root user; the code stays root-owned and read-only to it. It writes heads fitted
#    with FitHead (mount a volume there to keep them across containers) and TorchServe's logs.
#    The server only opens exports: another bundle needs `semgen export onnx|mar` run for it first.
RUN useradd --create-home --uid 10001 semgen \
 && mkdir -p /app/var/heads /app/var/torchserve && chown -R semgen /app/var
VOLUME /app/var/heads
USER semgen

EXPOSE 50051 8000 9464

# SERVING only once the model is loaded; the start period covers loading it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.core.healthcheck", "--address", "127.0.0.1:50051"]

# Exec form: the server is PID 1 and gets SIGTERM itself (health NOT_SERVING, drain, exit 0).
# The grace period stays below `docker stop`'s default 10 s; raise both together (docker stop -t).
STOPSIGNAL SIGTERM
CMD ["semgen", "serve", "--models", "/app/artifacts", "--heads-dir", "/app/var/heads", "--host", "0.0.0.0", \
     "--port", "50051", "--metrics-port", "9464", "--http-host", "0.0.0.0", "--http-port", "8000", \
     "--device", "cuda", "--grace-seconds", "8"]
