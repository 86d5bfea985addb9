-- The dashboard's sign-ins, one row each, so that every server of a
-- dashboard (several replicas of an application that mounts it, restarts)
-- knows them, and signing out ends one for good. The cookie's value is
-- never stored: only its SHA-256, and the SHA-256 of the token it was
-- signed in with (a new token ends the sessions of the old one).
CREATE TABLE IF NOT EXISTS queue_dashboard_sessions (
    id_hash BYTEA PRIMARY KEY,
    token_hash BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
