-- A delivery is keyed by (destination, event_id, event_name): Meta deduplicates on event_name
-- together with event_id, so a client that gives one pixel event id to its `lead` and its `won`
-- must have both delivered, the `won` never acked as a duplicate of the `lead`.
-- Every existing row is kept: each was claimed with its event's name; a row without one (none
-- is written so) keeps '' as its name. The key's column order keeps (destination, event_id)
-- as its prefix, so `leadpipe trace` still probes the key once per destination.
UPDATE deliveries SET event_name = '' WHERE event_name IS NULL;
ALTER TABLE deliveries ALTER COLUMN event_name SET NOT NULL;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_pkey;
ALTER TABLE deliveries ADD PRIMARY KEY (destination, event_id, event_name);
