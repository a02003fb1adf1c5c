-- Rack identity on the broker: the Ed25519 public key a rack signs its
-- results and events with, enrolled beside its X25519 sealing key. Racks
-- enrolled before this migration have none and must enrol again before the
-- ledger accepts their messages.
ALTER TABLE rack_keys
    ADD COLUMN signing_key bytea CHECK (signing_key IS NULL OR length(signing_key) = 32);

-- The management-key KDF version of each card. Cards that exist now keep
-- version 1 (their chips may already hold its keys); cards imported from
-- now on get version 2, which binds the algorithm into the derivation.
-- (Adding with default 1 and then changing the default rewrites no row.)
ALTER TABLE cards
    ADD COLUMN management_key_kdf smallint NOT NULL DEFAULT 1
        CHECK (management_key_kdf IN (1, 2));
ALTER TABLE cards ALTER COLUMN management_key_kdf SET DEFAULT 2;
