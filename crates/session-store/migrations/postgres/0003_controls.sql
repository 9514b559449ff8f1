-- agentrt session store, schema version 3: controls (SessionStore::post_control).
-- A control is a request to the loop running a session (steer it, cancel it), posted by any
-- process holding the store. It is kept beside the session's events, not among them: the
-- events' seqs belong to the loop that writes them. Numbered per session from 0.
CREATE TABLE controls (
    session_id TEXT   NOT NULL REFERENCES sessions (id),
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    at_ms      BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    PRIMARY KEY (session_id, seq)
);
