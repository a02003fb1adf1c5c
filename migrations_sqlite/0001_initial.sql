-- cardfleet control-plane schema for SQLite (standalone mode): the same
-- tables and meaning as migrations/0001_initial.sql. So the file can be read
-- with the sqlite3 shell, UUIDs are hyphenated TEXT, timestamps are UTC
-- ISO 8601 TEXT (2025-01-31T12:00:00.123Z) and JSON is TEXT.

CREATE TABLE process_settings (
    name        TEXT PRIMARY KEY,
    enabled     INTEGER NOT NULL DEFAULT 0 CHECK (enabled IN (0, 1)),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- The process is disabled until an administrator enables it.
INSERT INTO process_settings (name, enabled) VALUES ('initialize-temporary-card', 0);

CREATE TABLE cards (
    id           TEXT PRIMARY KEY,
    card_number  TEXT NOT NULL UNIQUE,
    chip_serial  TEXT NOT NULL UNIQUE,
    card_type    TEXT NOT NULL,
    profile      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('produced', 'initializing', 'unassigned', 'failed')),
    state_reason TEXT,
    imported_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX cards_type_state ON cards (card_type, state, id);

CREATE TABLE batches (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    requested   INTEGER NOT NULL,
    accepted    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    batch_id    TEXT NOT NULL REFERENCES batches (id),
    card_id     TEXT NOT NULL REFERENCES cards (id),
    state       TEXT NOT NULL CHECK (state IN ('queued', 'awaiting_card', 'dispatched', 'encoding',
                                               'succeeded', 'failed', 'cancelled')),
    rack_id     TEXT,
    reason      TEXT,
    steps       TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX jobs_batch ON jobs (batch_id, card_id);
CREATE INDEX jobs_card ON jobs (card_id, created_at);
CREATE INDEX jobs_awaiting ON jobs (card_id) WHERE state = 'awaiting_card';
-- At most one live job per card.
CREATE UNIQUE INDEX jobs_one_live_per_card ON jobs (card_id)
    WHERE state IN ('queued', 'awaiting_card', 'dispatched', 'encoding');

-- PIN and PUK of a job, AES-256-GCM encrypted; key_id names the key so keys
-- can rotate. Generated before the job can be dispatched so every retry
-- encodes the same values.
CREATE TABLE credentials (
    job_id      TEXT PRIMARY KEY REFERENCES jobs (id),
    card_id     TEXT NOT NULL REFERENCES cards (id),
    key_id      TEXT NOT NULL,
    pin_nonce   BLOB NOT NULL,
    pin_ct      BLOB NOT NULL,
    puk_nonce   BLOB NOT NULL,
    puk_ct      BLOB NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX credentials_card ON credentials (card_id);

-- Transactional outbox: a row is written with the job's transition to
-- 'queued' and deleted once the bus confirmed the publish. AUTOINCREMENT:
-- ids are never reused, as with PostgreSQL sequences.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    rack_id     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX outbox_job ON outbox (job_id);

-- Where each chip was last seen; drives dispatch of awaiting jobs.
CREATE TABLE slot_locations (
    chip_serial TEXT PRIMARY KEY,
    rack_id     TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    seen_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE INDEX slot_locations_slot ON slot_locations (rack_id, slot);

CREATE TABLE racks (
    rack_id        TEXT PRIMARY KEY,
    worker_id      TEXT,
    last_heartbeat TEXT,
    in_flight      INTEGER NOT NULL DEFAULT 0,
    version        TEXT
) WITHOUT ROWID;

CREATE TABLE slots (
    rack_id     TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    state       TEXT NOT NULL,
    chip_serial TEXT,
    reason      TEXT,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (rack_id, slot)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    source       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    message_id   TEXT,
    payload      TEXT NOT NULL
);

-- Append-only trail: one row per transition or secret-free administrative
-- action. Job rows carry the batch so progress streams can follow a batch.
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    card_id     TEXT,
    job_id      TEXT,
    batch_id    TEXT,
    from_state  TEXT,
    to_state    TEXT,
    card_state  TEXT,
    detail      TEXT
);
CREATE INDEX audit_batch ON audit (batch_id, id) WHERE batch_id IS NOT NULL;
CREATE INDEX audit_card ON audit (card_id, id);

-- Cancellations and slot releases waiting to be broadcast to the workers.
CREATE TABLE control_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    payload     TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
