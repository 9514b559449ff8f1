//! Every SQL statement the store runs, for both databases, and the differences between their
//! dialects — here and nowhere else.
//!
//! Most statements are the same text on SQLite and Postgres: [`statements!`] writes each once and
//! takes the three points where the dialects differ as arguments. The bulk forms that only one
//! database has (SQLite's `json_each`, Postgres' `UNNEST` over arrays) sit below in
//! [`sqlite`] and [`postgres`], side by side.

/// The statements both SQL backends run. Parameters are `$1, $2, …` in both dialects.
#[derive(Debug)]
pub(crate) struct Statements {
    /// Status and next seq of session `$1`, locked for the write transaction.
    pub session_state: &'static str,
    /// Status and next seq of session `$1`, read outside a write.
    pub resume_point: &'static str,
    /// The whole row of session `$1` (see [`super::rows::SessionRow`]).
    pub select_session: &'static str,
    /// The whole row of session `$1`, locked for the write transaction.
    pub load_session: &'static str,
    /// Sessions, newest first: status `$1`, profile `$2`, created in `[$3, $4)`, id below the
    /// cursor `$5` (each `NULL` for "any"), at most `$6` rows.
    pub list_sessions: &'static str,
    /// Next seq of session `$1` (replay's existence check and upper bound).
    pub next_seq: &'static str,
    /// If session `$3` is running at next seq `$4`: next seq to `$1`, updated time to `$2`.
    pub advance: &'static str,
    /// A new session row, unless the id is taken.
    pub insert_session: &'static str,
    /// One event: session, seq, time, kind, payload.
    pub insert_event: &'static str,
    /// Session `$6` ends (or runs again): next seq, updated time, status, error, cleanup error.
    pub set_status: &'static str,
    /// [`Statements::set_status`], only if session `$6` is running at next seq `$7`.
    pub end_running: &'static str,
    /// Copies session `$2`'s events with seq below `$3` into session `$1`.
    pub copy_events: &'static str,
    /// A blob (address, size, bytes), unless present.
    pub insert_blob: &'static str,
    /// The bytes of blob `$1`.
    pub get_blob: &'static str,
    /// Up to `$3` finished sessions updated before `$1` (with status `$2` unless `NULL`) that no
    /// session was forked from, oldest first, locked for the write transaction.
    pub prunable: &'static str,
    /// Deletes session `$1`'s events.
    pub delete_events: &'static str,
    /// Deletes session `$1`'s controls.
    pub delete_controls: &'static str,
    /// Session `$1`'s next control (numbered after its last) at time `$2`, kind `$3`, payload
    /// `$4`; returns its number.
    pub insert_control: &'static str,
    /// Session `$1`'s controls numbered from `$2`, in order, each as `seq, at_ms, kind,
    /// payload`; one row of `NULL`s when the session exists without any, none when it does not.
    pub select_controls: &'static str,
    /// Deletes session `$1`.
    pub delete_session: &'static str,
}

/// The shared statements, given how a dialect writes:
/// - `lock_rows`: the suffix that locks rows a write transaction read (Postgres `FOR UPDATE`;
///   SQLite needs none, `BEGIN IMMEDIATE` holds the whole database's write lock);
/// - `text`, `bigint`: the cast a parameter needs where it is only tested for `NULL` (Postgres
///   cannot infer its type there; SQLite has no parameter types).
macro_rules! statements {
    (lock_rows: $lock:literal, text: $text:literal, bigint: $bigint:literal) => {
        Statements {
            session_state: concat!("SELECT status, next_seq FROM sessions WHERE id = $1", $lock),
            resume_point: "SELECT status, next_seq FROM sessions WHERE id = $1",
            select_session: concat!(
                "SELECT id, parent_id, fork_seq, profile, status, created_at_ms, updated_at_ms, ",
                "metadata, error, cleanup_error, next_seq FROM sessions WHERE id = $1"
            ),
            load_session: concat!(
                "SELECT id, parent_id, fork_seq, profile, status, created_at_ms, updated_at_ms, ",
                "metadata, error, cleanup_error, next_seq FROM sessions WHERE id = $1",
                $lock
            ),
            list_sessions: concat!(
                "SELECT id, parent_id, fork_seq, profile, status, created_at_ms, updated_at_ms, ",
                "metadata, error, cleanup_error, next_seq FROM sessions ",
                "WHERE ($1",
                $text,
                " IS NULL OR status = $1) ",
                "AND ($2",
                $text,
                " IS NULL OR profile = $2) ",
                "AND ($3",
                $bigint,
                " IS NULL OR created_at_ms >= $3) ",
                "AND ($4",
                $bigint,
                " IS NULL OR created_at_ms < $4) ",
                "AND ($5",
                $text,
                " IS NULL OR id < $5) ORDER BY id DESC LIMIT $6"
            ),
            next_seq: "SELECT next_seq FROM sessions WHERE id = $1",
            advance: "UPDATE sessions SET next_seq = $1, updated_at_ms = $2 \
                 WHERE id = $3 AND status = 'running' AND next_seq = $4",
            insert_session: "INSERT INTO sessions (id, parent_id, fork_seq, profile, status, \
                 created_at_ms, updated_at_ms, metadata, error, cleanup_error, next_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9) \
                 ON CONFLICT (id) DO NOTHING",
            insert_event: "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
                 VALUES ($1, $2, $3, $4, $5)",
            set_status: "UPDATE sessions SET next_seq = $1, updated_at_ms = $2, status = $3, \
                 error = $4, cleanup_error = $5 WHERE id = $6",
            end_running: "UPDATE sessions SET next_seq = $1, updated_at_ms = $2, status = $3, \
                 error = $4, cleanup_error = $5 \
                 WHERE id = $6 AND status = 'running' AND next_seq = $7",
            copy_events: "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
                 SELECT $1, seq, at_ms, kind, payload FROM events \
                 WHERE session_id = $2 AND seq < $3",
            insert_blob: "INSERT INTO blobs (address, size, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (address) DO NOTHING",
            get_blob: "SELECT data FROM blobs WHERE address = $1",
            prunable: concat!(
                "SELECT s.id FROM sessions s ",
                "WHERE s.status <> 'running' AND s.updated_at_ms < $1 ",
                "AND ($2",
                $text,
                " IS NULL OR s.status = $2) ",
                "AND NOT EXISTS (SELECT 1 FROM sessions c WHERE c.parent_id = s.id) ",
                "ORDER BY s.updated_at_ms, s.id LIMIT $3",
                $lock
            ),
            delete_events: "DELETE FROM events WHERE session_id = $1",
            delete_controls: "DELETE FROM controls WHERE session_id = $1",
            insert_control: "INSERT INTO controls (session_id, seq, at_ms, kind, payload) \
                 SELECT $1, COALESCE(MAX(seq) + 1, 0), $2, $3, $4 FROM controls \
                 WHERE session_id = $1 RETURNING seq",
            select_controls: "SELECT c.seq, c.at_ms, c.kind, c.payload FROM sessions s \
                 LEFT JOIN controls c ON c.session_id = s.id AND c.seq >= $2 \
                 WHERE s.id = $1 ORDER BY c.seq",
            delete_session: "DELETE FROM sessions WHERE id = $1",
        }
    };
}

/// SQLite's statements.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: Statements = statements!(lock_rows: "", text: "", bigint: "");

/// Postgres' statements.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: Statements =
    statements!(lock_rows: " FOR UPDATE", text: "::text", bigint: "::bigint");

/// SQLite's bulk forms: a JSON array parameter stands for a list.
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    /// Status and next seq of every session whose id is in the JSON array `$1`.
    pub(crate) const RUN_STATE: &str = "SELECT id, status, next_seq FROM sessions \
         WHERE id IN (SELECT value FROM json_each($1))";
    /// Sets each `[id, next seq]` pair of the JSON array `$1`, updated time `$2`.
    pub(crate) const RUN_ADVANCE: &str = "UPDATE sessions \
         SET next_seq = json_extract(j.value, '$[1]'), updated_at_ms = $2 \
         FROM json_each($1) AS j WHERE sessions.id = json_extract(j.value, '$[0]')";
    /// A multi-row event insert is this, then [`EVENT_ROW`] once per row, comma-separated.
    pub(crate) const INSERT_EVENTS: &str =
        "INSERT INTO events (session_id, seq, at_ms, kind, payload) VALUES ";
    /// One row of [`INSERT_EVENTS`].
    pub(crate) const EVENT_ROW: &str = "(?, ?, ?, ?, ?)";
    /// Replay's chunk read (run through rusqlite): session `?1`, seqs in `[?2, ?3)`.
    pub(crate) const REPLAY_RANGE: &str = "SELECT seq, at_ms, kind, payload FROM events \
         WHERE session_id = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq";
}

/// Postgres' bulk forms: array parameters expanded with `UNNEST`.
#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    /// A whole append in one round trip: locks session `$1`; only if it is running at next seq
    /// `$2`, inserts the events (seqs `$4`, kinds `$5`, payloads `$6`, time `$3`) and sets its
    /// next seq to `$7`. Returns the state found. The check and the writes see the same locked
    /// row version, so nothing is written on a conflict.
    pub(crate) const APPEND_IN_ONE: &str = "WITH s AS ( \
             SELECT status, next_seq FROM sessions WHERE id = $1 FOR UPDATE \
         ), ok AS ( \
             SELECT 1 FROM s WHERE status = 'running' AND next_seq = $2 \
         ), ins AS ( \
             INSERT INTO events (session_id, seq, at_ms, kind, payload) \
             SELECT $1, t.seq, $3, t.kind, t.payload \
             FROM UNNEST($4::bigint[], $5::text[], $6::text[]) AS t(seq, kind, payload) \
             WHERE EXISTS (SELECT 1 FROM ok) \
         ), upd AS ( \
             UPDATE sessions SET next_seq = $7, updated_at_ms = $3 \
             WHERE id = $1 AND EXISTS (SELECT 1 FROM ok) \
         ) SELECT status, next_seq FROM s";
    /// Events of one session `$1` at time `$2`: seqs `$3`, kinds `$4`, payloads `$5`.
    pub(crate) const INSERT_EVENTS: &str = "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
         SELECT $1, t.seq, $2, t.kind, t.payload \
         FROM UNNEST($3::bigint[], $4::text[], $5::text[]) AS t(seq, kind, payload)";
    /// Locks every session whose id is in `$1`, in id order (two writers locking overlapping
    /// sets cannot deadlock), and reads its state.
    pub(crate) const RUN_STATE: &str =
        "SELECT id, status, next_seq FROM sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE";
    /// Events of many sessions at time `$1`: session ids `$2`, seqs `$3`, kinds `$4`,
    /// payloads `$5`.
    pub(crate) const RUN_INSERT: &str = "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
         SELECT t.sid, t.seq, $1, t.kind, t.payload \
         FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[]) \
         AS t(sid, seq, kind, payload)";
    /// Sets the next seqs `$3` of sessions `$2`, updated time `$1`.
    pub(crate) const RUN_ADVANCE: &str = "UPDATE sessions SET next_seq = v.next, updated_at_ms = $1 \
         FROM UNNEST($2::text[], $3::bigint[]) AS v(id, next) WHERE sessions.id = v.id";
    /// Replay's chunk read: session `$1`, seqs from `$2`, at most `$3` rows.
    pub(crate) const REPLAY_ROWS: &str = "SELECT seq, at_ms, kind, payload FROM events \
         WHERE session_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn the_dialects_differ_only_in_row_locks_and_null_test_casts() {
        let normalize = |s: &str| {
            s.replace(" FOR UPDATE", "")
                .replace("::text", "")
                .replace("::bigint", "")
        };
        let pairs = [
            (SQLITE.session_state, POSTGRES.session_state),
            (SQLITE.load_session, POSTGRES.load_session),
            (SQLITE.list_sessions, POSTGRES.list_sessions),
            (SQLITE.prunable, POSTGRES.prunable),
            (SQLITE.insert_session, POSTGRES.insert_session),
        ];
        for (lite, pg) in pairs {
            assert_eq!(lite, normalize(pg));
        }
        assert!(POSTGRES.session_state.ends_with("FOR UPDATE"));
        assert!(!SQLITE.prunable.contains("FOR UPDATE"));
    }

    /// The columns of [`super::super::rows::SessionRow`], in its order.
    const SESSION_COLUMNS: &str = "id, parent_id, fork_seq, profile, status, created_at_ms, \
         updated_at_ms, metadata, error, cleanup_error, next_seq";

    #[test]
    fn session_rows_read_the_columns_in_session_row_order() {
        #[cfg(feature = "sqlite")]
        let st = &SQLITE;
        #[cfg(all(feature = "postgres", not(feature = "sqlite")))]
        let st = &POSTGRES;
        for sql in [st.select_session, st.load_session, st.list_sessions] {
            assert!(
                sql.starts_with(&format!("SELECT {SESSION_COLUMNS} FROM")),
                "{sql}"
            );
        }
    }
}
