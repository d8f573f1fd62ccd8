# vlmloc: one entry point for the environment, the tests, the chapters and the book.
#   make book    venv + execute the chapters (toy models) + build the HTML book
#   make test    the test suite (it also executes every chapter on the toy models)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAMA := simple-lama-inpainting==0.1.2

# Nothing here may reach the Hugging Face Hub; plots render without a display.
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

BOOK_SRC := book
BOOK_HTML := $(BOOK_SRC)/_build/html
# --toc must be absolute: Jupyter Book 1 checks the path from the current directory, but
# sphinx-external-toc then resolves a relative one against book/. --path-output book keeps the
# HTML in book/_build/html (by default it would follow _config.yml to ./_build/html).
# --all rebuilds every page so that warnings of unchanged pages still fail the build.
JB_BUILD := $(BIN)/jupyter-book build $(BOOK_SRC) --path-output $(BOOK_SRC) \
	--config _config.yml --toc $(CURDIR)/_toc.yml -W -n --keep-going --all

LINT_PATHS := lib tests scripts

.PHONY: help venv test chapters book-html book check-book lint clean

help:
	@echo "make venv        create .venv (python3.11) and install .[book,dev] -c constraints.txt + $(LAMA) --no-deps"
	@echo "make test        HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q"
	@echo "make chapters    execute notebooks/*.ipynb into build/runs/<model>/"
	@echo "make book-html   stage each chapter's executed book copy (toy-llava; chapter 3: toy-internvl) and build $(BOOK_HTML)"
	@echo "make book        venv + chapters + book-html"
	@echo "make check-book  screenshot and check every page of the built book"
	@echo "make lint        ruff check + ruff format --check on $(LINT_PATHS)"
	@echo "make clean       remove build products (keeps .venv)"

venv: $(STAMP)

# constraints.txt is the lock: the exact versions CI runs (pyproject.toml only states ranges).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e ".[book,dev]"
	$(BIN)/pip install --no-deps $(LAMA)
	touch $@

test: venv
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

chapters: venv
	$(BIN)/python -m vlmloc.chapters run

book-html: venv
	$(BIN)/python -m vlmloc.chapters stage
	$(JB_BUILD)
	@echo "Book: $(CURDIR)/$(BOOK_HTML)/index.html"

book: venv
	$(MAKE) chapters
	$(MAKE) book-html

check-book: venv
	$(BIN)/python scripts/check_book.py

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean:
	rm -rf $(BOOK_SRC)/_build $(BOOK_SRC)/notebooks build .pytest_cache .ruff_cache
