# cnnlab. `make train` and `make test` first install what they need: a virtualenv in .venv
# with cnnlab (editable) and its pinned dependencies (torch==2.14.1, torchvision==0.29.1).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# A local copy of CIFAR-10 to import when the cache is empty (used only if the file exists);
# without one, `cnnlab train` downloads CIFAR-10 with torchvision.
DATA   ?= ../shared/data/cifar10-jpeg.tar.gz

.PHONY: install train data test test-fast test-gpu bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]' -c constraints.txt
	touch $(STAMP)

lock: $(STAMP)
	(sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^cnnlab') > constraints.new
	mv constraints.new constraints.txt

data: $(STAMP)
	@if [ -e "$(DATA)" ] && ! $(BIN)/cnnlab data info >/dev/null 2>&1; then $(BIN)/cnnlab data import "$(DATA)"; fi

train: data
	$(BIN)/cnnlab train $(ARGS)

# two test files at a time (pytest-xdist), one torch thread each (tests/conftest.py): much of the suite waits on
# subprocesses and servers. A file stays on one worker, so its module fixtures are built once
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow and not browser" $(ARGS)

# the GPU tier (tests/test_gpu.py): a few minutes on one CUDA GPU; without one it says so and skips
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m gpu tests/test_gpu.py $(ARGS)

bench: data
	$(BIN)/python -m tests.bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
