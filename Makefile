# The README's two commands: `make demo` (the main job, end to end) and `make test` (every test).
# Both install what is missing (Python venv, local cloud binaries, cached under ~/.cache/flowstore)
# and start the real local servers they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-cluster demo-down test test-unit crds bootstrap lint bench clean cloud-up cloud-down

bootstrap: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap
	scripts/bootstrap $(VENV)
	touch $@

demo: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/demo

# The same demo with the operator as a Pod from the Helm chart on the local cloud's node.
demo-cluster: bootstrap
	CLUSTER=1 PATH="$(abspath $(VENV))/bin:$$PATH" scripts/demo

# Stops what `KEEP=1 make demo` (or demo-cluster) left running: the operator and the local cloud.
demo-down:
	scripts/demo down

test: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/run-tests

# The chart's CRDs are generated from crds/ (the one source), never edited by hand.
crds:
	rm -f helm/flowstore-operator/crds/*.yaml
	cp crds/*.yaml helm/flowstore-operator/crds/

# The unit tier alone: no server is started (seconds).
test-unit: bootstrap
	$(PY) -m pytest -p no:cacheprovider -q tests/unit

lint: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -p no:cacheprovider -q tests/packaging/test_quality.py

bench: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/operator_bench.py

cloud-up:
	scripts/localcloud up

cloud-down:
	scripts/localcloud down

clean:
	scripts/demo down || true
	rm -rf $(VENV) .localcloud
