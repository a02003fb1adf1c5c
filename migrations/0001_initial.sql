-- cardfleet control-plane schema: cards and their initialization jobs, the
-- encrypted credentials generated for them, the outbox that feeds RabbitMQ,
-- what the racks last reported, dead letters and the audit trail.

CREATE TABLE process_settings (
    name        text PRIMARY KEY,
    enabled     boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The process is disabled until an administrator enables it.
INSERT INTO process_settings (name, enabled) VALUES ('initialize-temporary-card', false);

CREATE TABLE cards (
    id           uuid PRIMARY KEY,
    card_number  text NOT NULL UNIQUE,
    chip_serial  text NOT NULL UNIQUE,
    card_type    text NOT NULL,
    profile      text NOT NULL,
    state        text NOT NULL CHECK (state IN ('produced', 'initializing', 'unassigned', 'failed')),
    state_reason text,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_type_state ON cards (card_type, state, id);

CREATE TABLE batches (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    requested   integer NOT NULL,
    accepted    integer NOT NULL
);

CREATE TABLE jobs (
    id          uuid PRIMARY KEY,
    batch_id    uuid NOT NULL REFERENCES batches (id),
    card_id     uuid NOT NULL REFERENCES cards (id),
    state       text NOT NULL CHECK (state IN ('queued', 'awaiting_card', 'dispatched', 'encoding',
                                               'succeeded', 'failed', 'cancelled')),
    rack_id     text,
    reason      text,
    steps       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
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
    job_id      uuid PRIMARY KEY REFERENCES jobs (id),
    card_id     uuid NOT NULL REFERENCES cards (id),
    key_id      text NOT NULL,
    pin_nonce   bytea NOT NULL,
    pin_ct      bytea NOT NULL,
    puk_nonce   bytea NOT NULL,
    puk_ct      bytea NOT NULL,
    status      text NOT NULL CHECK (status IN ('pending', 'active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credentials_card ON credentials (card_id);

-- Transactional outbox: a row is written with the job's transition to
-- 'queued' and deleted once RabbitMQ confirmed the publish.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    rack_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Where each chip was last seen; drives dispatch of awaiting jobs.
CREATE TABLE slot_locations (
    chip_serial text PRIMARY KEY,
    rack_id     text NOT NULL,
    slot        integer NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE racks (
    rack_id        text PRIMARY KEY,
    worker_id      text,
    last_heartbeat timestamptz,
    in_flight      integer NOT NULL DEFAULT 0,
    version        text
);

CREATE TABLE slots (
    rack_id     text NOT NULL,
    slot        integer NOT NULL,
    state       text NOT NULL,
    chip_serial text,
    reason      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rack_id, slot)
);

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    source       text NOT NULL,
    reason       text NOT NULL,
    message_id   text,
    payload      text NOT NULL
);

-- Append-only trail: one row per transition or secret-free administrative
-- action. Job rows carry the batch so progress streams can follow a batch.
CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    card_id     uuid,
    job_id      uuid,
    batch_id    uuid,
    from_state  text,
    to_state    text,
    card_state  text,
    detail      jsonb
);
CREATE INDEX audit_batch ON audit (batch_id, id) WHERE batch_id IS NOT NULL;
CREATE INDEX audit_card ON audit (card_id, id);

-- Cancellations waiting to be broadcast on cardfleet.control.
CREATE TABLE control_outbox (
    id          bigserial PRIMARY KEY,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
