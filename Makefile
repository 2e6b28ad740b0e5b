# terway-agent: two commands on a fresh Debian machine (as root).
#   make demo   set up, then run the demo (agent + pods as network namespaces)
#   make test   set up, then run the whole test suite
PY := .venv/bin/python

.PHONY: setup demo test bench lint
setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/terway-agent demo

test: setup
	@.venv/bin/pytest

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	@.venv/bin/ruff check terway_agent plugins examples tests benchmarks
