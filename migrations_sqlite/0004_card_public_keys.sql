-- The public keys generated on each card, as in
-- migrations/0004_card_public_keys.sql.
CREATE TABLE card_public_keys (
    card_id     TEXT NOT NULL REFERENCES cards (id),
    slot        TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    spki_der    BLOB NOT NULL,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (card_id, slot)
) WITHOUT ROWID;
