-- The delivery log no longer lists the destinations: a sender writes only its own registered
-- name (leadpipe-registry), so a new destination needs no migration. The check that stays is
-- the shape of a name, the same rule as Destination::is_valid_name. Every row is kept.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_destination_known;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_destination_name
    CHECK (destination ~ '^[a-z][a-z0-9_]{0,31}$');
