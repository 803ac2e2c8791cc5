# Two entry points: `make serve` and `make test`. Both set up .venv once (a stamp file
# records the installed pyproject.toml) and build the gRPC stubs from protos/. `make test` also sets up
# what only the tests use: an Open Inference Protocol client in its own venv (.venv-oip: tritonclient, a
# client we did not write, with its own protobuf) and promtool (Debian's prometheus package) where missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STUBS := serving/_generated/.built
OIP_VENV := .venv-oip
OIP_STAMP := $(OIP_VENV)/.installed
OIP_REQUIREMENTS := tests/serving/oip-client-requirements.txt
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup test-setup promtool export serve test clean-stubs

setup: $(STAMP) $(STUBS)

test-setup: setup $(OIP_STAMP) promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

$(OIP_STAMP): $(OIP_REQUIREMENTS)
	test -x $(OIP_VENV)/bin/python || $(PY) -m venv $(OIP_VENV)
	$(OIP_VENV)/bin/python -m pip install -q -r $(OIP_REQUIREMENTS)
	touch $(OIP_STAMP)

# promtool checks the exposition, the alert/recording rules and their unit tests (tests/deploy)
promtool:
	@command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null \
		|| { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null; }; }
	@promtool --version | head -1

$(STUBS): $(STAMP) $(PROTOS) serving/build_protos.py
	$(BIN)/python -m serving.build_protos
	touch $(STUBS)

# The build step: the server only opens exports (each command skips work that is up to date).
export: setup
	$(BIN)/semgen export onnx --models artifacts --cache var/onnx
	$(BIN)/semgen export mar --models artifacts --store var/torchserve/store --handler serving/torchserve/handler.py \
		--onnx-cache var/onnx

serve: export
	$(BIN)/semgen serve --models artifacts --host 127.0.0.1 --port 50051 --metrics-port 9464

test: test-setup
	$(BIN)/python -m pytest -q

clean-stubs:
	rm -rf serving/_generated
