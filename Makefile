# Two entry points: `make serve` and `make test`. Both set up .venv once (a stamp file
# records the installed pyproject.toml) and build the gRPC stubs from protos/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STUBS := serving/_generated/.built
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup export serve test clean-stubs

setup: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

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

test: setup
	$(BIN)/python -m pytest -q

clean-stubs:
	rm -rf serving/_generated
