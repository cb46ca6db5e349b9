# annfleet — the two commands the README gives are `make up` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/annfleet/v1/*.proto)

.PHONY: up test test-deps lint typecheck protos bench bench-10m clean install image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

## Start a local cluster (shard servers + router) on the default bundle and print a sample answer.
up: $(STAMP)
	$(BIN)/annfleet up $(ARGS)

## Install everything the tests need, then lint, type-check, check generated code and run the suite.
test: test-deps lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## Tools the tests need beyond Python packages (redis-server, chromium, helm, ...).
test-deps: $(STAMP)
	VENV=$(VENV) bash tests/install-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck

# mypy cannot follow setuptools' package-dir mapping, so it checks a tree of symlinks laid
# out as the installed package (annfleet/ = core/, annfleet/server = server/, ...).
TYPECHECK := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/annfleet
	for f in core/*.py core/py.typed; do ln -s $(CURDIR)/$$f $(TYPECHECK)/annfleet/; done
	for p in server router client model benchmarks; do ln -s $(CURDIR)/$$p $(TYPECHECK)/annfleet/$$p; done
	ln -s $(CURDIR)/protos/annfleet/v1 $(TYPECHECK)/annfleet/v1
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p annfleet

## Regenerate the committed protobuf code.
protos: $(STAMP)
	$(BIN)/python -m annfleet.protogen

bench: $(STAMP)
	$(BIN)/annfleet bench recall-latency --quick

bench-10m: $(STAMP)
	$(BIN)/annfleet bench scale --items 10000000 --dim 64 --shards 4

## Build the container image (deploy/Dockerfile) where a Docker daemon is reachable.
IMAGE ?= annfleet:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f deploy/Dockerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) build *.egg-info
