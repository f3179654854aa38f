#!/usr/bin/env bash
# The whole-pipeline benchmark (tests/benches/pipeline.rs) twice in one run: on the single
# broker of AMQP_URL (default 127.0.0.1:5672), then on the three-node cluster of
# scripts/rabbit-cluster.sh (started here, stopped afterwards), at the same offered rate; then
# both rates and p99s side by side (`make bench-cluster`).
#
# The three nodes share this machine's cores with the services, PostgreSQL and the load: the
# difference is what replicating every message to three nodes costs, not a speed-up.
#
#   PIPELINE_RATE  events/s offered to both (default 1000)
#   PIPELINE_SECS  seconds of load for each (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"
RATE="${PIPELINE_RATE:-1000}"
SECS="${PIPELINE_SECS:-30}"
SINGLE="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
SUMMARY="$(mktemp)"
trap 'rm -f "$SUMMARY"; scripts/rabbit-cluster.sh stop >/dev/null 2>&1 || true' EXIT

run() {
  local label=$1 url=$2
  echo "== $label: $RATE events/s for $SECS s"
  AMQP_URL="$url" PIPELINE_LABEL="$label" PIPELINE_SUMMARY="$SUMMARY" \
    PIPELINE_RATE="$RATE" PIPELINE_SECS="$SECS" \
    "$CARGO" bench -p leadpipe-tests --bench pipeline
}

run "one node" "$SINGLE"
scripts/rabbit-cluster.sh start
run "3-node cluster" "$(scripts/rabbit-cluster.sh urls)"

echo
echo "whole pipeline, $RATE events/s offered for $SECS s each, same build, same machine:"
printf '  %-16s %12s %14s %16s %14s  %s\n' "broker" "accepted/s" "e2e p99 ms" "ingest p99 ms" "ceiling msg/s" "drain"
while IFS=$'\t' read -r label rate p99 ingest ceiling drained; do
  printf '  %-16s %12s %14s %16s %14s  %s\n' "$label" "$rate" "$p99" "$ingest" "$ceiling" "$drained"
done < "$SUMMARY"
echo "The three nodes share the machine's cores with everything else: the difference is the"
echo "cost of replicating each message to three nodes (Raft), not a scale-out figure."
