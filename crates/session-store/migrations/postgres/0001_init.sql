-- agentrt session store, schema version 1 (Postgres).
-- JSON values (metadata, payloads, errors) are stored as canonical JSON text: byte-exact round
-- trips, and no jsonb restrictions (jsonb rejects the \u0000 escape).

CREATE TABLE sessions (
    id             TEXT    PRIMARY KEY NOT NULL,
    parent_id      TEXT    NULL REFERENCES sessions (id),
    fork_seq       BIGINT  NULL,
    profile        TEXT    NULL,
    status         TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    created_at_ms  BIGINT  NOT NULL,
    updated_at_ms  BIGINT  NOT NULL,
    metadata       TEXT    NOT NULL,
    error          TEXT    NULL,
    cleanup_error  TEXT    NULL,
    next_seq       BIGINT  NOT NULL DEFAULT 0 CHECK (next_seq >= 0)
);

CREATE INDEX sessions_by_status ON sessions (status, id);
CREATE INDEX sessions_by_profile ON sessions (profile, id);
CREATE INDEX sessions_by_created ON sessions (created_at_ms);

CREATE TABLE events (
    session_id TEXT   NOT NULL REFERENCES sessions (id),
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    at_ms      BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE blobs (
    address TEXT   PRIMARY KEY NOT NULL,
    size    BIGINT NOT NULL,
    data    BYTEA  NOT NULL
);
