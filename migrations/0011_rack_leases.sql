-- Leases in fleet mode: when a rack sends no heartbeat for
-- `ledger.rack_lease_seconds`, its jobs that are `dispatched` or `encoding`
-- are marked for an operator. The job keeps its state and the card its
-- escrowed credentials (never revoked): when the rack comes back the job is
-- redelivered, the engine resumes by the card's journal, and the result it
-- reports wins and clears the mark.
ALTER TABLE jobs ADD COLUMN lease_expired_at timestamptz;
CREATE INDEX jobs_lease_expired ON jobs (id) WHERE lease_expired_at IS NOT NULL;
