#!/usr/bin/env bash
# Deletes what tests left behind on the local broker and database server: queues of test
# namespaces (`t<kind><12 hex>.…`) that no consumer reads, and test databases (`t<32 hex>`)
# nobody is connected to. A test that is running keeps its own: its queues have consumers and
# its database has connections. Used by `make clean-test-namespaces` and `.ci/run`.
set -uo pipefail

if ! listing=$(timeout 60 rabbitmqctl list_queues name consumers --no-table-headers -q 2>&1); then
  echo "clean-test-namespaces: rabbitmqctl could not list the broker's queues, none deleted: $listing" >&2
  listing=
fi
queues=$(printf '%s\n' "$listing" | awk '$2 == 0 {print $1}' | grep -E '^t[a-z-]*[0-9a-f]{12}\.')
n=0
for q in $queues; do
  if timeout 30 rabbitmqctl delete_queue "$q" -q >/dev/null 2>&1; then n=$((n + 1)); fi
done
echo "clean-test-namespaces: deleted $n queue(s) left by tests"

url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadpipe}
psql_url="${url%/*}/postgres"
if ! dbs=$(psql "$psql_url" -Atc "SELECT datname FROM pg_database WHERE datname ~ '^t[0-9a-f]{32}$'" 2>&1); then
  echo "clean-test-namespaces: PostgreSQL could not list the databases, none dropped: $dbs" >&2
  dbs=
fi
m=0
for d in $dbs; do
  # Refused (and kept) while anyone is connected to it.
  if psql "$psql_url" -qc "DROP DATABASE \"$d\"" >/dev/null 2>&1; then m=$((m + 1)); fi
done
echo "clean-test-namespaces: dropped $m database(s) left by tests"
