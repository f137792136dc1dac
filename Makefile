# The two commands of the README. Both install what they need first.
#   make run    install and start the app on a demo model (http://127.0.0.1:8050)
#   make test   install (incl. test extras and Debian chromium for browser tests) and run all tests
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch is pinned to the CPU build first, so nothing later pulls a multi-GB CUDA build
TORCH := torch==2.13.0

.PHONY: install install-test browser run test bench

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .

install-test: install
	$(PIP) install -q -e ".[test]"

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	    || echo "note: could not install chromium; browser tests will be skipped"; }

run: install
	$(PYTHON) -m viewer --model demo:resnet

test: install-test browser
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest -q

bench: install-test
	$(PYTHON) benchmarks/bench_core.py
