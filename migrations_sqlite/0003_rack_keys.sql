-- The X25519 public key each rack enrolled with, as in
-- migrations/0003_rack_keys.sql.
CREATE TABLE rack_keys (
    rack_id     TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL CHECK (length(public_key) = 32),
    enrolled_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    enrolled_by TEXT NOT NULL
) WITHOUT ROWID;
