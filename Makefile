# dlpipe: the two commands a newcomer needs are `make demo` and `make test`.
# Both run `make setup` first, which is idempotent (a second run skips what is done).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup demo test airflow clean-state

help:
	@echo "make demo     run the ETA example pipeline end to end through Airflow (sets up first)"
	@echo "make test     run the test suite (sets up first)"
	@echo "make airflow  start 'airflow standalone' with the project's DAGs on http://localhost:8080"
	@echo "make setup    only install/refresh .venv, Horovod and the Airflow database"
	@echo "make clean-state  delete .dlpipe/ (all data, models, audit log, Airflow database)"

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh

airflow: setup
	@source scripts/env.sh && exec airflow standalone

clean-state:
	rm -rf .dlpipe
