-- An operator may send a dead letter again once (POST /v1/dead-letters/{id}/redrive).
ALTER TABLE dead_letters ADD COLUMN redriven_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN redriven_by text;
