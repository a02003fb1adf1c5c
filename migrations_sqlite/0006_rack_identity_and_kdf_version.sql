-- As migrations/0006_rack_identity_and_kdf_version.sql: the rack's Ed25519
-- signing key, and the management-key KDF version per card (existing cards
-- keep version 1, new cards get version 2).
ALTER TABLE rack_keys
    ADD COLUMN signing_key BLOB CHECK (signing_key IS NULL OR length(signing_key) = 32);

ALTER TABLE cards
    ADD COLUMN management_key_kdf INTEGER NOT NULL DEFAULT 2
        CHECK (management_key_kdf IN (1, 2));
UPDATE cards SET management_key_kdf = 1;
