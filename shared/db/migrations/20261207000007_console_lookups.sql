-- The operator console (`leadpipe console`) finds an event by its lead or order id, or by its
-- source and a time range, and counts each destination's rows of the last hour and day.
-- - `lead_id` and `order_id` are the client's ids of the lead and the order (ids, not personal
--   data; SPEC §2), written by the claim. Rows from before this migration have neither.
-- - Every index covers only columns a row's updates never change (set once by the claim), so a
--   claim → outcome update still touches no index (heap-only tuples, see
--   20261204000003_hot_updates.sql):
--   - `deliveries_first_seen (first_seen_at)`: appended at its right edge, it serves the
--     overview's counts and the source + time range search;
--   - `deliveries_lead_id`, `deliveries_order_id`: one probe per destination table. Their keys
--     are random, so each insert dirties one page of each; `order_id` is only set on `won`
--     and `refund`, and its index is partial.
ALTER TABLE deliveries ADD COLUMN lead_id text, ADD COLUMN order_id text;
CREATE INDEX deliveries_first_seen ON deliveries (first_seen_at);
CREATE INDEX deliveries_lead_id ON deliveries (lead_id) WHERE lead_id IS NOT NULL;
CREATE INDEX deliveries_order_id ON deliveries (order_id) WHERE order_id IS NOT NULL;
