-- The public part (SubjectPublicKeyInfo, DER) of each key pair generated on a
-- card, as its worker reported with a successful encoding: one row per slot,
-- replaced when a later encoding of the card succeeds. Public data: a CA
-- issues certificates for these keys.
CREATE TABLE card_public_keys (
    card_id     uuid NOT NULL REFERENCES cards (id),
    slot        text NOT NULL,
    algorithm   text NOT NULL,
    spki_der    bytea NOT NULL,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (card_id, slot)
);
