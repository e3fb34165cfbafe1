# Every target sets itself up: `make run` and `make test` work on a fresh clone.
# `make run` installs only what serving needs; `make test` (lint, bench, screenshots) adds the
# dev tools and the Ray extra on top.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev run test test-fast lint bench screenshots clean sysdeps

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

$(RUN_STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(DEV_STAMP)

run: install
	$(BIN)/whisper-api serve

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Test fixtures need the ffmpeg binary; browser tests need Debian's chromium (no browser download).
sysdeps:
	@missing=""; command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Tests write nothing inside the checkout: `git status` stays clean.
test: sysdeps lint
	$(BIN)/pytest

# The edit loop: everything but the browser, Ray, schemathesis and load tests (a few minutes).
test-fast: sysdeps lint
	$(BIN)/pytest -m "not slow and not browser and not ray"

# The README's screenshots: the browser tests, writing into docs/screenshots.
screenshots: sysdeps install-dev
	SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest tests/test_web.py

bench: install-dev
	$(BIN)/python bench/run.py
	$(BIN)/python bench/languages.py
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) temp bench/out
