# Two entry points for a new user: `make demo` (the embedded demo) and `make test`.
# Both create .venv on first use; later runs reuse it (and pip's wheel cache keeps
# the one-off mmcv build, about 6 minutes on 2 cores).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# built from source against the installed torch; pip keeps the wheel in its cache
INSTALL_MMCV := MAX_JOBS=$$(nproc) $(PIP) install -q --no-build-isolation 'mmcv==2.1.0'

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q 'torch===2.13.0' 'torchvision==0.28.0' 'setuptools>=77,<81' wheel ninja
	$(INSTALL_MMCV)
	@# a wheel cached from a build against another torch imports but its ops do not load:
	@# drop it from pip's cache and build once more against this torch
	$(PY) -c "import mmcv.ops" 2>/dev/null || { \
	  echo "mmcv 2.1.0 in pip's cache was built for another torch: rebuilding it"; \
	  $(PIP) cache remove 'mmcv-2.1.0*' && $(INSTALL_MMCV) --force-reinstall --no-deps; }
	$(PIP) install -q --no-build-isolation -e '.[tests]'
	$(PY) -c "import ssn_plugins, mmdet, mmseg; print('environment ready')"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out outputs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) tools/benchmark.py --out outputs/benchmark.json

clean:
	rm -rf $(VENV) outputs work_dirs
