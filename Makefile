# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The local CPU wheel; GPU users: install your CUDA torch into .venv first, then `make install TORCH=`.
TORCH  ?= torch==2.13.0

.PHONY: demo test install install-test data clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	@if [ -n "$(TORCH)" ]; then $(PIP) install -q "$(TORCH)"; fi
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Fashion-MNIST (the demo's and the tests' data): present, or installed here (scripts/fashion-mnist.sh).
data:
	@./scripts/fashion-mnist.sh

demo: install data
	$(VENV)/bin/fae demo

test: install-test data
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs build src/*.egg-info
