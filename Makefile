# leadpipe — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
RUN_DIR := .run

# Local defaults for `make run` only; any of them can be overridden from the environment.
run: export SITE_WIDGET_SECRET ?= dev-secret
run: export LEADPIPE_NAMESPACE ?= leadpipe
run: export INGEST_ADDR ?= 127.0.0.1:8080
run: export LOG_FORMAT ?= pretty

.PHONY: run test test-cluster cluster e2e fuzz services tools build release lint fmt bench bench-cluster soak screenshots clean-test-namespaces help

help:
	@echo "make run    - build and run the pipeline against local RabbitMQ/Postgres"
	@echo "make test   - formatting, lints, unit and integration tests"
	@echo "make e2e    - the whole pipeline as processes with 20,000 events (E2E_EVENTS to change)"
	@echo "make fuzz   - property-based fuzzing of the parser and the webhook mapper"
	@echo "make bench  - throughput/latency/RSS benchmarks with the broker's own ceiling"
	@echo "make cluster - a three-node RabbitMQ cluster on ports 5701-5703 (scripts/rabbit-cluster.sh)"
	@echo "make test-cluster - the pipeline on that cluster: a node killed, two stopped"
	@echo "make bench-cluster - the pipeline benchmark on one node, then on the cluster (PIPELINE_RATE, PIPELINE_SECS)"
	@echo "make screenshots - the console's pages in headless Chromium, saved under docs/console/"
	@echo "make clean-test-namespaces - delete queues and databases that tests left behind"
	@echo "make soak   - the whole pipeline for 10 minutes at the rate make bench found (SOAK_SECS, PIPELINE_RATE)"

## Start RabbitMQ and PostgreSQL if needed (installed-but-stopped, or docker compose).
services:
	@scripts/services.sh

## Queues of test namespaces no consumer reads and test databases nobody is connected to
## (scripts/clean-test-namespaces.sh); .ci/run calls it before the tests.
clean-test-namespaces:
	@scripts/clean-test-namespaces.sh

## Install what `make test` needs beyond cargo (promtool) when it is absent.
tools:
	@scripts/tools.sh

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
test: services tools
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## The console's pages in headless Chromium (the browser test), saved under docs/console/.
screenshots: services
	$(CARGO) build --workspace --bins
	LEADPIPE_CONSOLE_SCREENSHOTS=$(CURDIR)/docs/console $(CARGO) test -p leadpipe-tests --test it console_browser

## A three-node RabbitMQ cluster beside the broker on 5672 (scripts/rabbit-cluster.sh).
cluster:
	scripts/rabbit-cluster.sh start

## The cluster tests (tests/cluster/): a node killed, then two stopped, under the whole
## pipeline (the tests start the cluster, or skip saying why); it is stopped afterwards. The
## services' warnings go to target/test-logs/cluster, and are printed when a test fails.
CLUSTER_LOGS := $(CURDIR)/target/test-logs/cluster
test-cluster: services build
	rm -rf $(CLUSTER_LOGS)
	LEADPIPE_TEST_LOG_DIR=$(CLUSTER_LOGS) AMQP_URL=$$(scripts/rabbit-cluster.sh urls) \
		$(CARGO) test -p leadpipe-tests --test cluster -- --nocapture; \
		rc=$$?; scripts/rabbit-cluster.sh stop || true; \
		if [ $$rc -ne 0 ]; then for f in $(CLUSTER_LOGS)/*.log; do \
			echo "== $$f (the last 40 lines but per-event dead letters)"; \
			grep -v '"message":"dead-lettered"' "$$f" | tail -n 40; done; fi; \
		exit $$rc

## The whole pipeline as processes with 20,000 events (make test runs it with 400).
e2e: services build
	E2E_EVENTS=$${E2E_EVENTS:-20000} $(CARGO) test -p leadpipe-tests --test it pipeline::a_mixed_stream -- --nocapture

## Property-based fuzzing of the event parser/validator and the native-webhook mapper.
fuzz:
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test -p leadpipe-events any_
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test -p leadpipe-ingest any_native

## Benchmarks (release build): see README "Benchmarks".
bench: services
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p leadpipe-tests --bench ingest
	$(CARGO) bench -p leadpipe-tests --bench senders
	$(CARGO) bench -p leadpipe-tests --bench console
	$(CARGO) bench -p leadpipe-tests --bench pipeline

## The whole-pipeline benchmark on the single broker, then on the three-node cluster, at the
## same rate (PIPELINE_RATE, default 1000; PIPELINE_SECS, default 30): both rates and p99s.
bench-cluster: services
	$(CARGO) build --release --workspace --bins
	scripts/bench-cluster.sh

## The whole pipeline at a steady rate for 10 minutes (SOAK_SECS, PIPELINE_RATE): lag p99
## by minute, memory of every service at start and end, the delivery log's size every 30 s
## with one-minute partitions kept SOAK_RETENTION_SECS (180): it must level off.
soak: services
	$(CARGO) build --release --workspace --bins
	PIPELINE_RATE=$${PIPELINE_RATE:-$$(cat target/bench/held-rate 2>/dev/null || echo 1000)} \
	PIPELINE_SECS=$${SOAK_SECS:-600} SOAK_RETENTION_SECS=$${SOAK_RETENTION_SECS:-180} \
		$(CARGO) bench -p leadpipe-tests --bench pipeline
