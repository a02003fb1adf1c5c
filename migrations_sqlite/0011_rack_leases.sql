-- Leases: see migrations/0011_rack_leases.sql. A job of a rack silent for
-- `ledger.rack_lease_seconds` is marked (ISO 8601 UTC text, as every time
-- column here); the next result applied for it clears the mark.
ALTER TABLE jobs ADD COLUMN lease_expired_at TEXT;
CREATE INDEX jobs_lease_expired ON jobs (id) WHERE lease_expired_at IS NOT NULL;
