# daxfs: `make demo` and `make test` are all a new machine needs.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.daxfs-installed
SRC    := pyproject.toml setup.py daxfs/pmem/_native.c daxfs/pmem/_persist.h daxfs/pmem/_pyutil.h daxfs/mm/_vm.c daxfs/fuse/_tap.c daxfs/fs/_commit.c daxfs/fs/_stat.c daxfs/fs/_create.c daxfs/fs/_copy.c daxfs/fs/_direct.c daxfs/pagecache/_hit.c daxfs/fs/_media.h daxfs/block/_uring.c scripts/bootstrap.sh

.PHONY: demo test lint bench test-slow format clean

$(STAMP): $(SRC)
	./scripts/bootstrap.sh
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# -n auto: the suite on every core (pytest-xdist; 10.8 min against 16.4 on this 2-core VM)
test: $(STAMP) lint
	$(BIN)/python -m pytest -n auto

# the slow suite: exhaustive crash and fault loops, and the long runs of the tools (fsx,
# stress, fuzzer), SLOW_SECONDS each; the tools also run by hand:
#   daxfs stress IMAGE --seconds N --seed S, python -m daxfs.testing.fuzz --seconds N,
#   python -m daxfs.testing.faults, python -m daxfs.testing.fsx --seconds N
SLOW_SECONDS ?= 120

test-slow: $(STAMP)
	DAXFS_SLOW_SECONDS=$(SLOW_SECONDS) $(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check daxfs tests bench examples
	$(BIN)/ruff format --check daxfs tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

format: $(STAMP)
	$(BIN)/ruff format daxfs tests bench examples
	$(BIN)/ruff check --fix daxfs tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info bench/build demo.pmem
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -f daxfs/pmem/_native*.so
