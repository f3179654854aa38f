-- The delivery log and idempotency keys (SPEC §5): one row per (destination, event_id).
-- No raw PII is ever stored here: identifiers are hashed before a payload is recorded, and
-- error messages are written without field values.
CREATE TABLE IF NOT EXISTS deliveries (
    destination        text        NOT NULL,
    event_id           text        NOT NULL,
    status             text        NOT NULL,
    -- Requests made for this event (each send attempt, retries included).
    attempts           integer     NOT NULL DEFAULT 0,
    event_name         text,
    source             text,
    -- Who holds the event while a request is under way, and until when; an expired lease
    -- (a crashed worker) may be taken over.
    lease_owner        text,
    lease_expires_at   timestamptz,
    last_http_status   integer,
    last_error_code    text,
    last_error_message text,
    -- The destination's reference for the delivery (fbtrace_id, request id, object id).
    destination_ref    text,
    -- The exact request body a DRY_RUN sender would have sent (hashed identifiers only).
    dry_run_payload    jsonb,
    ingested_at        timestamptz,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    PRIMARY KEY (destination, event_id),
    CONSTRAINT deliveries_status_known CHECK (status IN (
        'in_flight', 'sent', 'retrying', 'dead_lettered', 'blocked_consent',
        'skipped_unmapped', 'expired', 'dry_run'
    )),
    CONSTRAINT deliveries_destination_known CHECK (destination IN (
        'meta', 'ga4', 'google_ads', 'crm'
    ))
);

-- `leadpipe trace <event_id>` looks an event up across destinations.
CREATE INDEX IF NOT EXISTS deliveries_event_id ON deliveries (event_id);
