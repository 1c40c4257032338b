# The two commands of the README:
#   make demo   run the main job (embedded mode) on the sample capture
#   make test   install everything a fresh machine lacks, then lint, type-check and test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
NATIVE  := $(VENV)/.native
JARS    := deploy/kafka/libs/.fetched

.PHONY: demo test lint system-packages clean lock

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# the compiled decoders (native/): built when a Rust toolchain is there, else one notice line
$(NATIVE): $(STAMP) native/build.sh native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
	bash native/build.sh $(BIN)
	touch $@

$(JARS): deploy/kafka/pom.xml
	bash deploy/kafka/kafka-local.sh fetch
	touch $@

system-packages:
	bash .ci/system-packages.sh

demo: $(NATIVE)
	$(BIN)/kaspwatch run --pcap samples/sample.pcap

lint: $(NATIVE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python tools/check_layout.py

test: system-packages $(NATIVE) $(JARS) lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) deploy/kafka/libs deploy/kafka/run

# Regenerate the hash-pinned lock after changing pyproject.toml dependencies.
lock: $(STAMP)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock
