# The two set-up commands of the README. Both install the project into .venv first (pinned versions, CPU is
# enough), then run.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segresmamba demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
