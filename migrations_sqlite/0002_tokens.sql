-- Access control for SQLite: the same tables and meaning as
-- migrations/0002_tokens.sql (UUIDs and timestamps as TEXT, as in 0001).

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    -- Comma-separated roles: admin, operator, officer, auditor, worker.
    roles       TEXT NOT NULL,
    -- Hex SHA-256 of the secret; the secret itself is never stored.
    token_hash  TEXT NOT NULL UNIQUE,
    -- Enrollment tokens are bound to one rack.
    rack_id     TEXT,
    single_use  INTEGER NOT NULL DEFAULT 0 CHECK (single_use IN (0, 1)),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT,
    revoked_at  TEXT,
    used_at     TEXT
) WITHOUT ROWID;

-- PIN mailers of a batch: released once, again only after an admin reopened them.
CREATE TABLE mailer_releases (
    batch_id          TEXT PRIMARY KEY REFERENCES batches (id),
    releases          INTEGER NOT NULL,
    last_released_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_released_by  TEXT NOT NULL,
    reopened          INTEGER NOT NULL DEFAULT 0 CHECK (reopened IN (0, 1))
) WITHOUT ROWID;

-- A PIN destroyed after its mailer was released: pin_nonce and pin_ct are
-- empty and this says when it happened.
ALTER TABLE credentials ADD COLUMN pin_destroyed_at TEXT;

-- The audit trail is append-only.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused');
END;
CREATE INDEX audit_action ON audit (action, id);
