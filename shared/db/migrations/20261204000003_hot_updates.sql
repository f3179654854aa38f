-- Less write-ahead log per delivery, so a growing delivery log does not drive checkpoints:
-- - `deliveries_awaiting` served a poller that no longer exists (verdicts come back through
--   the delay queues); as it covered `updated_at`, every update of a row wrote new entries
--   into each of the table's indexes;
-- - `deliveries_event_id` served `leadpipe trace`, which now probes the primary key once per
--   destination; an index on a random key dirties a random page on every insert;
-- - with room left on each page, a row's claim → outcome updates stay on its page
--   (heap-only tuples) and touch no index.
DROP INDEX IF EXISTS deliveries_awaiting;
DROP INDEX IF EXISTS deliveries_event_id;
ALTER TABLE deliveries SET (fillfactor = 70);
