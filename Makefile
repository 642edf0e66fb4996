# The two set-up commands of the README. Both install the project into .venv first (pinned versions, CPU is
# enough), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick install

install: $(STAMP)

# pip 23 (Python 3.11's) gives up on MONAI Label's dependency tree; 26.1 resolves it.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet pip==26.1
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segresmamba demo

# two workers (pytest-xdist), each test file on one of them: its module fixtures (servers, datasets) start once
PARALLEL := -n 2 --dist loadfile

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PARALLEL) --durations=25

# everything but the tests marked slow (setup.cfg [tool:pytest] markers)
test-quick: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PARALLEL) -m "not slow"
