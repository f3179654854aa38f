#!/usr/bin/env bash
# `make run`: the pipeline on this machine — ingest in the foreground, the senders in the
# background (DRY_RUN where a destination's credentials are absent), all stopped together.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=./target/release
mkdir -p .run

$bin/leadpipe migrate
$bin/leadpipe topology apply >/dev/null

pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM

# The senders of the enabled destinations (LEADPIPE_DESTINATIONS, default all registered), as
# `leadpipe destinations` lists them: name, service, metrics port, missing variables.
# A sender never assumes DRY_RUN: without its credentials it refuses to start (exit 2). For a
# local run, this script asks for DRY_RUN for each sender whose variables are not all set, and
# says which are missing.
senders=()
lines=()
while read -r name service port missing; do
  if [ "$missing" != - ]; then
    DRY_RUN=${DRY_RUN:-true} $bin/$service >.run/$service.log 2>&1 &
    note=", DRY_RUN (not set: ${missing//,/, })"
  else
    $bin/$service >.run/$service.log 2>&1 &
    note=""
  fi
  pids+=($!)
  senders+=("$service")
  lines+=("$(printf '  %-18s http://127.0.0.1:%s/readyz  (logs in .run/%s.log)%s' "$service" "$port" "$service" "$note")")
done < <($bin/leadpipe destinations)

# The operator console, on this machine only unless CONSOLE_TOKEN is set.
console_addr=${CONSOLE_ADDR:-127.0.0.1:8090}
CONSOLE_ADDR=$console_addr $bin/leadpipe console >.run/console.log 2>&1 &
pids+=($!)
senders+=(console)
lines+=("$(printf '  %-18s http://%s/  (overview, find an event, dead letters; logs in .run/console.log)' console "$console_addr")")

# A sender that refuses its configuration exits at once: show why instead of a dead pipeline.
sleep 1
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    name=${senders[$i]}
    echo "$name did not start:" >&2
    tail -n 5 ".run/$name.log" >&2
    exit 2
  fi
done

cat <<MSG

leadpipe is running (namespace ${LEADPIPE_NAMESPACE}):
  ingest            http://${INGEST_ADDR}        (logs below)
$(printf '%s\n' "${lines[@]}")

A sender in DRY_RUN builds and records every request (status dry_run) and sends nothing; set its
variables to send for real.

Send the sample lead from another terminal:

    SITE_WIDGET_SECRET=${SITE_WIDGET_SECRET} INGEST_ADDR=${INGEST_ADDR} $bin/leadpipe send examples/lead.json --source site-widget --now

then see what each destination did with it:

    psql ${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadpipe} -c 'select destination, event_id, status, attempts from deliveries'

Ctrl-C stops everything.

MSG
$bin/ingest
