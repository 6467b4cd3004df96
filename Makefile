# Two commands do everything on a fresh machine:
#   make main   # set up, then run the mini Looking Inward study on the embedded models (CPU, no key, no network)
#   make test   # set up, then lint, type-check and run the default test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: main test typecheck mypy-view slow bench venv clean

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

main: $(STAMP)
	$(BIN)/intro run specs/looking_inward_mini.intro --max-memory 4G

test: $(STAMP) mypy-view
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

typecheck: $(STAMP) mypy-view
	$(BIN)/mypy

# mypy cannot follow the editable install's import hook that maps intro.compiler -> compiler/,
# intro.runtime -> runtime/ and intro.stdlib -> stdlib/, so it checks a view of the installed layout:
# .mypy-view/intro/ holds symlinks to the repo's folders (directories, so new modules need no rebuild).
# Rebuilt from scratch each time so a removed module leaves no dangling link; gitignored.
MYPY_VIEW := .mypy-view/intro
mypy-view:
	rm -rf .mypy-view
	mkdir -p $(MYPY_VIEW)
	for pkg in compiler runtime stdlib; do ln -s ../../$$pkg $(MYPY_VIEW)/$$pkg; done
	for f in intro/*; do case $$f in */__pycache__) ;; *) ln -s ../../$$f $(MYPY_VIEW)/; esac; done

slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV)
