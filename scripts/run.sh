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

$bin/meta-sender >.run/meta-sender.log 2>&1 &
pids+=($!)
$bin/ga4-sender >.run/ga4-sender.log 2>&1 &
pids+=($!)
$bin/google-ads-sender >.run/google-ads-sender.log 2>&1 &
pids+=($!)
$bin/crm-writer >.run/crm-writer.log 2>&1 &
pids+=($!)

cat <<MSG

leadpipe is running (namespace ${LEADPIPE_NAMESPACE}):
  ingest        http://${INGEST_ADDR}        (logs below)
  meta-sender   http://127.0.0.1:9101/readyz  (logs in .run/meta-sender.log)$( [ -z "${META_ACCESS_TOKEN:-}" ] && echo ", DRY_RUN: META_PIXEL_ID/META_ACCESS_TOKEN not set")
  ga4-sender    http://127.0.0.1:9102/readyz  (logs in .run/ga4-sender.log)$( [ -z "${GA4_API_SECRET:-}" ] && echo ", DRY_RUN: GA4_MEASUREMENT_ID/GA4_API_SECRET not set")
  google-ads-sender http://127.0.0.1:9103/readyz  (logs in .run/google-ads-sender.log)$( [ -z "${GOOGLE_ADS_REFRESH_TOKEN:-}" ] && echo ", DRY_RUN: GOOGLE_ADS_* credentials not set")
  crm-writer    http://127.0.0.1:9104/readyz  (logs in .run/crm-writer.log)$( [ -z "${CRM_WEBHOOK_URL:-}${HUBSPOT_ACCESS_TOKEN:-}" ] && echo ", DRY_RUN: CRM_WEBHOOK_URL/CRM_WEBHOOK_SECRET not set")

Send the sample lead from another terminal:

    SITE_WIDGET_SECRET=${SITE_WIDGET_SECRET} INGEST_ADDR=${INGEST_ADDR} $bin/leadpipe send examples/lead.json --source site-widget --now

then see what each destination did with it:

    psql ${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadpipe} -c 'select destination, event_id, status, attempts from deliveries'

Ctrl-C stops everything.

MSG
$bin/ingest
