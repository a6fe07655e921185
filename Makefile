# The two commands of the README, and the pieces they are made of.
#   make run    install, start the local servers, run the whole pipeline (python -m flows.full)
#   make test   install, then run the whole suite (it starts and stops its own servers)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := .tools/bin/uv
# uv is pinned like everything else; it installs the 2 GB stack in ~15 s where pip takes ~110 s.
UV_VERSION := 0.13.9
# torch==2.13.0+cpu (the lock) comes from a local wheel folder where the machine has one (these build
# machines: /opt/wheels), else from PyTorch's CPU wheel index. Every other pin comes from PyPI; the
# index strategy lets uv take each pin from whichever index has it (PyTorch's index also hosts numpy,
# pillow, ... in other versions).
WHEELS ?= /opt/wheels
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE = $(if $(wildcard $(WHEELS)/torch-*.whl),--find-links $(WHEELS),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match)

.PHONY: install run test services-start services-stop services-status deploy lock clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools uv==$(UV_VERSION)

# Reinstall only when the lock (or this recipe) changes. Bytecode is compiled at install: where
# PYTHONDONTWRITEBYTECODE is set (these machines set it) every process would otherwise compile each
# module it imports, ~1 s of a search's 1.5 s.
$(VENV)/.installed: requirements.lock Makefile | $(UV)
	test -x $(PY) || $(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) $(TORCH_SOURCE) requirements.lock
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m tasks.services start
	$(PY) -m flows.full $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

services-start: install
	$(PY) -m tasks.services start
services-stop: install
	$(PY) -m tasks.services stop
services-status: install
	$(PY) -m tasks.services status

deploy: install
	$(PY) -m tasks.services start prefect
	$(PY) -m deployments.deploy

# Re-resolve the pins after editing pyproject.toml (torch's CPU build from the same place as install).
# openvino-telemetry is left out: with it installed, OpenVINO's model conversion sends usage events
# to Google Analytics unless a consent file in the user's home says no, from a forked process that
# deadlocked in a threaded flow run here; without it OpenVINO uses its own no-op stub.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test --python-version 3.11 $(TORCH_SOURCE) --quiet \
		--no-emit-package openvino-telemetry -o requirements.lock

clean:
	-$(PY) -m tasks.services stop
	rm -rf $(VENV) .tools .services
