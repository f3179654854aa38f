-- `accepted`: the destination took the request and reports each event's outcome later
-- (Google's Data Manager API); a poller resolves the row to `sent` or `dead_lettered`.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_known;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_known CHECK (status IN (
    'in_flight', 'accepted', 'sent', 'retrying', 'dead_lettered', 'blocked_consent',
    'skipped_unmapped', 'expired', 'dry_run'
));
CREATE INDEX IF NOT EXISTS deliveries_awaiting ON deliveries (destination, updated_at)
    WHERE status = 'accepted';
