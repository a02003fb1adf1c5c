-- The X25519 public key each rack enrolled with; the dispatcher seals job
-- secrets to it. Re-enrolment replaces the key (and is audited).
CREATE TABLE rack_keys (
    rack_id     text PRIMARY KEY,
    public_key  bytea NOT NULL CHECK (length(public_key) = 32),
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    enrolled_by text NOT NULL
);
