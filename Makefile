# schemagate — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv demo test unit cases lint testbed images cluster bench clean
help:
	@echo "make demo     - install, then run the pipeline on an embedded PostgreSQL (food truck passes, wholesale is blocked)"
	@echo "make test     - install, build the Kubernetes test bed (cached), lint, run every test"
	@echo "make cases    - run every case of a case corpus through the CLI (SCHEMAGATE_CASES=DIR, default ../shared/cases/precheck)"
	@echo "make lint     - ruff, mypy and the import contracts"
	@echo "make testbed  - build kube-apiserver, kube-controller-manager, etcd, kubelet, kube-scheduler, pause; fetch kubectl and helm (cached)"
	@echo "make images   - build the operator, example-app and Debian base images with buildah, no registry (cached)"
	@echo "make cluster  - start the test bed and print how to point kubectl at it (ARGS=--real-node: containerd + kubelet)"
	@echo "make bench    - run the benchmarks in bench/ and print every goal with met/not met (ratios, one run)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/schemagate demo

lint: venv
	$(BIN)/ruff check operator tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

testbed:
	bash tests/testbed/build.sh

images:
	bash tests/testbed/images.sh

test: venv testbed images lint
	$(BIN)/pytest $(PYTEST_ARGS)

cases: venv
	$(BIN)/pytest tests/conformance $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

cluster: venv testbed
	$(BIN)/python -m tests.testbed.cluster $(ARGS)

BENCHES := stall backup overhead shadow_scale precheck data_shadow rehearsal
BENCH_SUMMARY := $(CURDIR)/.bench-summary.jsonl
bench: venv
	@rm -f $(BENCH_SUMMARY)
	@for b in $(BENCHES); do echo "== bench/$$b.py"; SCHEMAGATE_BENCH_SUMMARY=$(BENCH_SUMMARY) $(BIN)/python bench/$$b.py || true; done
	-$(BIN)/python bench/operator.py
	$(BIN)/python bench/summary.py $(BENCH_SUMMARY) $(BENCHES)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
