# Every target sets itself up: `make run` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean sysdeps

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

run: install
	$(BIN)/whisper-api serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Test fixtures need the ffmpeg binary; browser tests need Debian's chromium (no browser download).
sysdeps:
	@missing=""; command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: sysdeps lint
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/languages.py
	$(BIN)/python bench/load.py

clean:
	rm -rf $(VENV) temp bench/out
