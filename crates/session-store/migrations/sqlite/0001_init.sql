-- agentrt session store, schema version 1 (SQLite).
-- JSON values (metadata, payloads, errors) are stored as canonical JSON text.

CREATE TABLE sessions (
    id             TEXT    PRIMARY KEY NOT NULL,
    parent_id      TEXT    NULL REFERENCES sessions (id),
    fork_seq       INTEGER NULL,
    profile        TEXT    NULL,
    status         TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,
    error          TEXT    NULL,
    cleanup_error  TEXT    NULL,
    -- Number of events = the seq the next append gets. Kept in the row so the writer's
    -- optimistic check is one primary-key lookup.
    next_seq       INTEGER NOT NULL DEFAULT 0 CHECK (next_seq >= 0)
);

CREATE INDEX sessions_by_status ON sessions (status, id);
CREATE INDEX sessions_by_profile ON sessions (profile, id);
CREATE INDEX sessions_by_created ON sessions (created_at_ms);

CREATE TABLE events (
    session_id TEXT    NOT NULL REFERENCES sessions (id),
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    at_ms      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;

CREATE TABLE blobs (
    address TEXT    PRIMARY KEY NOT NULL,
    size    INTEGER NOT NULL,
    data    BLOB    NOT NULL
);
