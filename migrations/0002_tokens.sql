-- Access control: API bearer tokens (stored only as SHA-256 hashes), PIN
-- mailer releases, destroyed PINs, and an audit trail the application
-- cannot change.

CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    -- Comma-separated roles: admin, operator, officer, auditor, worker.
    roles       text NOT NULL,
    -- Hex SHA-256 of the secret; the secret itself is never stored.
    token_hash  text NOT NULL UNIQUE,
    -- Enrollment tokens are bound to one rack.
    rack_id     text,
    single_use  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    used_at     timestamptz
);

-- PIN mailers of a batch: released once, again only after an admin reopened them.
CREATE TABLE mailer_releases (
    batch_id          uuid PRIMARY KEY REFERENCES batches (id),
    releases          integer NOT NULL,
    last_released_at  timestamptz NOT NULL DEFAULT now(),
    last_released_by  text NOT NULL,
    reopened          boolean NOT NULL DEFAULT false
);

-- A PIN destroyed after its mailer was released: pin_nonce and pin_ct are
-- empty and this says when it happened.
ALTER TABLE credentials ADD COLUMN pin_destroyed_at timestamptz;

-- The audit trail is append-only: no UPDATE, DELETE or TRUNCATE, whatever
-- the role. (Only a superuser dropping the trigger could change it.)
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE INDEX audit_action ON audit (action, id);
