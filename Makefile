# Two entry points for a new user: `make demo` (the embedded demo) and `make test`.
# Both create the environment on first use and reuse it afterwards.
#
# STACK picks the lock file the environment is installed from:
#   make test                 newest stack (requirements/newest.txt), in .venv
#   make test STACK=oldest    oldest supported stack (requirements/oldest.txt), in .venv-oldest
# mmcv 2.1.0 has no wheel for these torch builds, so it is built from source once per
# torch version and kept in its own folder (pip's wheel cache does not key on torch).
PYTHON ?= python3.11
STACK ?= newest
LOCK := requirements/$(STACK).txt
VENV := $(if $(filter newest,$(STACK)),.venv,.venv-$(STACK))
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION = $(shell sed -n 's/^torch=*\([0-9][0-9.]*\).*/\1/p' $(LOCK))
MMCV_WHEELS = $${XDG_CACHE_HOME:-$$HOME/.cache}/ssn_plugins/mmcv-2.1.0-torch$(TORCH_VERSION)
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(LOCK) tools/install_mmcv.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) torch torchvision numpy setuptools wheel ninja
	tools/install_mmcv.sh $(PY) $(LOCK) "$(MMCV_WHEELS)"
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e '.[all,tests]'
	@# `mim train ssn_plugins` looks for the package in site-packages: link the checkout there
	$(PY) -c 'import ssn_plugins.mim as m; m.link_for_mim(verbose=True)'
	$(PY) -c "import ssn_plugins, mmdet, mmseg, mmpretrain, mmcv.ops; print('environment ready:', ssn_plugins.compat.stack())"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) tools/benchmark.py --out outputs/benchmark.json

clean:
	rm -rf .venv .venv-* outputs work_dirs
