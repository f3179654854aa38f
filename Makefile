# leadpipe — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
RUN_DIR := .run

# Local defaults for `make run` only; any of them can be overridden from the environment.
run: export SITE_WIDGET_SECRET ?= dev-secret
run: export LEADPIPE_NAMESPACE ?= leadpipe
run: export INGEST_ADDR ?= 127.0.0.1:8080
run: export LOG_FORMAT ?= pretty

.PHONY: run test services build release lint fmt bench clean-namespaces help

help:
	@echo "make run    - build and run the pipeline against local RabbitMQ/Postgres"
	@echo "make test   - formatting, lints, unit and integration tests"
	@echo "make bench  - throughput/latency/RSS benchmarks with the broker's own ceiling"

## Start RabbitMQ and PostgreSQL if needed (installed-but-stopped, or docker compose).
services:
	@scripts/services.sh

build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

## Run the pipeline: migrate, declare the topology, start the senders and ingest.
run: services release
	@scripts/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Unit and integration tests against the real broker and database.
test: services
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## Benchmarks (release build): see README "Benchmarks".
bench: services
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p leadpipe-tests --bench ingest
	$(CARGO) bench -p leadpipe-tests --bench senders
