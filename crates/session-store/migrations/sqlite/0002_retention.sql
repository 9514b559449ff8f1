-- agentrt session store, schema version 2: what retention (SessionStore::prune) looks up.
-- A session may be pruned only when no session names it as its fork parent: find forks by parent.
-- (No index on updated_at_ms: every append moves it, and the hot path would pay for a maintenance
-- query; a prune scans the sessions table, which is small beside the events.)
CREATE INDEX sessions_by_parent ON sessions (parent_id);
