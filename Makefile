# The README's two commands: `make demo` (the main job, end to end) and `make test` (every test).
# Both install what is missing (Python venv, local cloud binaries, cached under ~/.cache/flowstore)
# and start the real local servers they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo demo-cluster test bootstrap lint bench clean cloud-up cloud-down

bootstrap: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap
	scripts/bootstrap $(VENV)
	touch $@

demo: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/demo

# The same demo with the operator as a Pod from the Helm chart on the local cloud's node.
demo-cluster: bootstrap
	CLUSTER=1 PATH="$(abspath $(VENV))/bin:$$PATH" scripts/demo

test: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/run-tests

lint: bootstrap
	$(PY) -m pytest tests/test_quality.py -q

bench: bootstrap
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/operator_bench.py

cloud-up:
	scripts/localcloud up

cloud-down:
	scripts/localcloud down

clean:
	scripts/localcloud down || true
	rm -rf $(VENV) .localcloud
