# `make demo` and `make test` each create .venv and install what they need; both are idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# optimum-rbln pins +cpu builds of torch/torchvision/torchaudio that PyPI lacks, so after every install pip
# would report them as conflicts, as an ERROR (with exit status 0). Installs skip that report; CHECK_PINS then
# prints every conflict but optimum-rbln's, and one line about those. A failing install still fails make.
PIP_INSTALL := $(PIP) install -q --no-warn-conflicts
CHECK_PINS := { $(PIP) check | grep -v '^optimum-rbln ' || true; } && \
	echo "optimum-rbln is installed without its +cpu pins, on purpose"
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
OPTIMUM_RBLN := optimum-rbln==0.12.0
DEMO_STORE := artifacts

.PHONY: install install-test test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt requirements/constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: the CPU build that matches optimum-rbln's pin.
	$(PIP_INSTALL) torch==2.13.0
	# optimum-rbln pins +cpu builds of torch/torchvision/torchaudio that PyPI lacks: install it alone,
	# then the dependencies it really uses at the versions it pins.
	$(PIP) install -q --no-deps $(OPTIMUM_RBLN)
	$(PIP_INSTALL) -r requirements/dev.txt -c requirements/constraints.txt
	$(PIP) install -q --no-deps -e .
	@$(CHECK_PINS)
	touch $(STAMP)

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) requirements/test.txt
	$(PIP_INSTALL) -r requirements/test.txt -c requirements/constraints.txt
	@$(CHECK_PINS)
	touch $(TEST_STAMP)

test: install-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=20

# The embedded demo LM, compiled on the simulator (a second compile or run is a store hit), then scored.
DEMO := RBLN_EVAL_SIMULATE=1 $(VENV)/bin/rbln-eval
DEMO_MODEL := rbln_eval/demo/models/llama
demo: install
	$(DEMO) compile $(DEMO_MODEL) --batch-size 4 --store $(DEMO_STORE)
	$(DEMO) run --model $(DEMO_MODEL) --batch-size 4 --store $(DEMO_STORE) \
		--tasks demo --include_path rbln_eval/demo/tasks --output_path results

clean:
	rm -rf $(VENV) .pytest_cache
