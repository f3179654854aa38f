-- The delivery log stays bounded: `deliveries` is partitioned by destination (LIST), each
-- destination's table by time (RANGE over `bucket`), so old rows go by dropping a partition
-- rather than by DELETE (see leadpipe_db::partitions, which the senders run on a timer).
--
-- - `bucket` is the start of the partition interval (delivery_log_settings.partition_secs,
--   a UTC day unless set otherwise on an empty log) that holds the event's `occurred_at`.
--   It is part of the key because PostgreSQL's unique indexes on a partitioned table must
--   hold the partition key. Every copy of an event carries the same `occurred_at` (it is
--   part of the event, and of a derived event_id), so every copy lands on the same row.
-- - A missing partition never fails a claim: each destination's table has a DEFAULT
--   partition, and so does `deliveries` itself (a destination whose sender has not created
--   its table yet). Creating a partition moves the default's rows for its range into it.
-- - Rows from before this migration carry no `occurred_at`: they are kept, each in its
--   destination's `_legacy` partition (bucket 1970-01-01). A claim looks there first and
--   moves an open row (in_flight, retrying, accepted) into its event's own partition; a
--   decided one (sent, dead_lettered, …) keeps acknowledging its copies. The legacy
--   partition is dropped once every row in it is past its destination's retention.
CREATE TABLE delivery_log_settings (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The width of one time partition; changed only while the log is empty.
    partition_secs integer NOT NULL
        CHECK (partition_secs BETWEEN 60 AND 86400 AND 86400 % partition_secs = 0)
);
INSERT INTO delivery_log_settings (partition_secs) VALUES (86400);

ALTER TABLE deliveries RENAME TO deliveries_unpartitioned;
ALTER INDEX deliveries_pkey RENAME TO deliveries_unpartitioned_pkey;

CREATE TABLE deliveries (
    destination        text        NOT NULL,
    event_id           text        NOT NULL,
    status             text        NOT NULL,
    attempts           integer     NOT NULL DEFAULT 0,
    event_name         text        NOT NULL,
    source             text,
    lease_owner        text,
    lease_expires_at   timestamptz,
    last_http_status   integer,
    last_error_code    text,
    last_error_message text,
    destination_ref    text,
    dry_run_payload    jsonb,
    ingested_at        timestamptz,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    -- When the event happened (NULL on rows from before partitioning).
    occurred_at        timestamptz,
    bucket             timestamptz NOT NULL,
    PRIMARY KEY (destination, event_id, event_name, bucket),
    CONSTRAINT deliveries_status_known CHECK (status IN (
        'in_flight', 'accepted', 'sent', 'retrying', 'dead_lettered', 'blocked_consent',
        'skipped_unmapped', 'expired', 'dry_run'
    )),
    CONSTRAINT deliveries_destination_name CHECK (destination ~ '^[a-z][a-z0-9_]{0,31}$')
) PARTITION BY LIST (destination);

CREATE TABLE deliveries_default PARTITION OF deliveries DEFAULT WITH (fillfactor = 70);

DO $$
DECLARE
    d text;
BEGIN
    FOR d IN SELECT DISTINCT destination FROM deliveries_unpartitioned LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF deliveries FOR VALUES IN (%L) PARTITION BY RANGE (bucket)',
            'deliveries_' || d, d);
        EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT WITH (fillfactor = 70)',
            'deliveries_' || d || '_default', 'deliveries_' || d);
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L) WITH (fillfactor = 70)',
            'deliveries_' || d || '_legacy', 'deliveries_' || d, '1970-01-02 00:00:00+00');
    END LOOP;
END
$$;

INSERT INTO deliveries (
    destination, event_id, status, attempts, event_name, source, lease_owner, lease_expires_at,
    last_http_status, last_error_code, last_error_message, destination_ref, dry_run_payload,
    ingested_at, first_seen_at, updated_at, sent_at, occurred_at, bucket)
SELECT
    destination, event_id, status, attempts, event_name, source, lease_owner, lease_expires_at,
    last_http_status, last_error_code, last_error_message, destination_ref, dry_run_payload,
    ingested_at, first_seen_at, updated_at, sent_at, NULL, '1970-01-01 00:00:00+00'
FROM deliveries_unpartitioned;

DROP TABLE deliveries_unpartitioned;
