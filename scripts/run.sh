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

# A sender never assumes DRY_RUN: without its credentials it refuses to start (exit 2). For a
# local run, this script asks for DRY_RUN for each sender whose variables are not all set, and
# says which are missing.
missing_of() {
  local out=() v
  for v in "$@"; do [ -n "${!v:-}" ] || out+=("$v"); done
  echo "${out[*]:-}"
}
declare -A missing
missing[meta-sender]=$(missing_of META_PIXEL_ID META_ACCESS_TOKEN)
missing[ga4-sender]=$(missing_of GA4_MEASUREMENT_ID GA4_API_SECRET)
missing[google-ads-sender]=$(missing_of GOOGLE_ADS_CUSTOMER_ID GOOGLE_ADS_CLIENT_ID \
  GOOGLE_ADS_CLIENT_SECRET GOOGLE_ADS_REFRESH_TOKEN GOOGLE_ADS_CONVERSION_ACTION_ID)
if [ "${CRM_KIND:-webhook}" = hubspot ]; then
  missing[crm-writer]=$(missing_of HUBSPOT_ACCESS_TOKEN)
else
  missing[crm-writer]=$(missing_of CRM_WEBHOOK_URL CRM_WEBHOOK_SECRET)
fi
declare -A note
for sender in meta-sender ga4-sender google-ads-sender crm-writer; do
  if [ -n "${missing[$sender]}" ]; then
    DRY_RUN=${DRY_RUN:-true} $bin/$sender >.run/$sender.log 2>&1 &
    note[$sender]=", DRY_RUN (not set: ${missing[$sender]// /, })"
  else
    $bin/$sender >.run/$sender.log 2>&1 &
    note[$sender]=""
  fi
  pids+=($!)
done

# A sender that refuses its configuration exits at once: show why instead of a dead pipeline.
sleep 1
senders=(meta-sender ga4-sender google-ads-sender crm-writer)
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
  meta-sender       http://127.0.0.1:9101/readyz  (logs in .run/meta-sender.log)${note[meta-sender]}
  ga4-sender        http://127.0.0.1:9102/readyz  (logs in .run/ga4-sender.log)${note[ga4-sender]}
  google-ads-sender http://127.0.0.1:9103/readyz  (logs in .run/google-ads-sender.log)${note[google-ads-sender]}
  crm-writer        http://127.0.0.1:9104/readyz  (logs in .run/crm-writer.log)${note[crm-writer]}

A sender in DRY_RUN builds and records every request (status dry_run) and sends nothing; set its
variables to send for real.

Send the sample lead from another terminal:

    SITE_WIDGET_SECRET=${SITE_WIDGET_SECRET} INGEST_ADDR=${INGEST_ADDR} $bin/leadpipe send examples/lead.json --source site-widget --now

then see what each destination did with it:

    psql ${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadpipe} -c 'select destination, event_id, status, attempts from deliveries'

Ctrl-C stops everything.

MSG
$bin/ingest
