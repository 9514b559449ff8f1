-- agentrt session store, schema version 2: what retention (SessionStore::prune) looks up.
-- A session may be pruned only when no session names it as its fork parent: find forks by parent.
CREATE INDEX sessions_by_parent ON sessions (parent_id);
-- Candidates are finished sessions that ended before a cutoff, oldest first.
CREATE INDEX sessions_by_updated ON sessions (updated_at_ms, id);
