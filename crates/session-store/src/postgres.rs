//! The Postgres backend: the same schema and semantics as SQLite, on a Postgres server.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::sync::mpsc;

use crate::config::{PreparedEvent, StoreConfig, from_seq, to_seq};
use crate::error::StoreError;
use crate::memory::{page, verify_blob};
use crate::migrations;
use crate::sql::{
    Cmd, EventRow, FetchChunk, REPLAY_CHUNK, SessionRow, StatsCell, WriteConn, WriterStats,
    parse_id, plan_append_run, prunable_sql, replay_stream, run_writer, send, session_from_row,
};
use crate::store::{EventStream, SessionStore};
use crate::types::{
    BlobAddress, Event, Finish, NewEvent, NewSession, Page, Pruned, ResumePoint, Retention,
    Session, SessionFilter, SessionId, SessionStatus,
};

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://postgres@127.0.0.1:5432/test`.
    pub url: String,
    /// Keep the store's tables in this schema (created if missing) instead of the server's
    /// default search path. Must be a plain identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub schema: Option<String>,
    /// Redaction and limits.
    pub store: StoreConfig,
    /// Most write requests the writer puts in one transaction. Default 512.
    pub max_batch: usize,
    /// Connections used for reads. Default 4.
    pub read_connections: u32,
}

impl PostgresConfig {
    /// Default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: None,
            store: StoreConfig::default(),
            max_batch: 512,
            read_connections: 4,
        }
    }

    /// Keeps the tables in `schema`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Sets redaction and limits.
    pub fn with_store_config(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }
}

/// A [`SessionStore`] on a Postgres server.
///
/// Like [`SqliteStore`](crate::SqliteStore): reads use a pool, and every write goes through one
/// group-commit writer task per store handle, answering each request after its transaction
/// committed (Postgres' default `synchronous_commit = on` makes that durable). Several processes
/// may share one database: a writer locks a session's row (`SELECT ... FOR UPDATE`) before its
/// optimistic seq check.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    read: PgPool,
    writer: mpsc::Sender<Cmd>,
    config: Arc<StoreConfig>,
    stats: Arc<StatsCell>,
}

fn valid_schema(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PostgresStore {
    /// Connects to `url` with default settings and migrates the schema.
    ///
    /// Errors: [`StoreError::Database`] if the server is unreachable,
    /// [`StoreError::SchemaTooNew`] if a newer version of this crate migrated the database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(PostgresConfig::new(url)).await
    }

    /// Connects with `config` and migrates the schema.
    pub async fn connect_with(config: PostgresConfig) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(&config.url)
            .map_err(|e| StoreError::InvalidInput(format!("postgres url {:?}: {e}", config.url)))?;
        if let Some(schema) = &config.schema {
            if !valid_schema(schema) {
                return Err(StoreError::InvalidInput(format!(
                    "postgres schema {schema:?} must match [a-z_][a-z0-9_]* (at most 63 bytes)"
                )));
            }
            let mut conn = sqlx::PgConnection::connect_with(&options).await?;
            // The name is validated above as a plain identifier, so quoting it is safe.
            let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            let created = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await;
            conn.close().await?;
            if let Err(e) = created {
                // Two stores creating the same schema at once: one of them loses the race.
                let exists = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") || d.code().as_deref() == Some("42P06"));
                if !exists {
                    return Err(e.into());
                }
            }
            options = options.options([("search_path", schema.as_str())]);
        }
        let write_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_with(options.clone())
            .await?;
        let mut conn = write_pool.acquire().await?;
        migrations::check_postgres_version(&mut conn).await?;
        migrations::postgres().run(&mut *conn).await?;
        let read = PgPoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .connect_with(options)
            .await?;
        let store_config = Arc::new(config.store.clone());
        let stats = Arc::new(StatsCell::default());
        let (tx, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        let writer = PgWriter {
            pool: write_pool,
            conn: Some(conn),
            in_tx: false,
        };
        tokio::spawn(run_writer(
            writer,
            rx,
            store_config.clone(),
            config.max_batch.max(1),
            stats.clone(),
        ));
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                read,
                writer: tx,
                config: store_config,
                stats,
            }),
        })
    }

    /// Counters of the group-commit writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.stats.snapshot()
    }
}

struct PgWriter {
    pool: PgPool,
    conn: Option<PoolConnection<Postgres>>,
    in_tx: bool,
}

impl PgWriter {
    fn conn(&mut self) -> Result<&mut PoolConnection<Postgres>, StoreError> {
        self.conn.as_mut().ok_or(StoreError::Closed)
    }
}

#[async_trait]
impl WriteConn for PgWriter {
    async fn begin(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.acquire().await?);
        }
        if let Err(e) = sqlx::query("BEGIN").execute(&mut **self.conn()?).await {
            // Probably a broken connection: drop it so the next batch reconnects.
            if let Some(c) = self.conn.take() {
                let _closed = c.close().await;
            }
            return Err(e.into());
        }
        self.in_tx = true;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut **self.conn()?).await?;
        self.in_tx = false;
        Ok(())
    }

    async fn rollback(&mut self) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        let ok = match self.conn.as_mut() {
            Some(c) => sqlx::query("ROLLBACK").execute(&mut **c).await.is_ok(),
            None => true,
        };
        if !ok && let Some(c) = self.conn.take() {
            let _closed = c.close().await;
        }
    }

    async fn append_in_one(
        &mut self,
        id: &SessionId,
        expected: u64,
        at_ms: i64,
        events: &[PreparedEvent],
    ) -> Result<Option<Option<(SessionStatus, u64)>>, StoreError> {
        let first = from_seq(expected)?;
        let seqs: Vec<i64> = (0..events.len() as i64).map(|i| first + i).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();
        let next = from_seq(expected + events.len() as u64)?;
        // One round trip: lock the row, and insert + advance only if the check passes. The
        // check and the writes see the same locked row version, so nothing is written on a
        // conflict, and a concurrent writer in another process waits for our commit.
        let row: Option<(String, i64)> = sqlx::query_as(APPEND_IN_ONE)
            .bind(id.to_string())
            .bind(first)
            .bind(at_ms)
            .bind(seqs)
            .bind(kinds)
            .bind(payloads)
            .bind(next)
            .fetch_optional(&mut **self.conn()?)
            .await?;
        let found = row
            .map(|(status, n)| {
                Ok::<_, StoreError>((
                    SessionStatus::from_str(&status).map_err(|_| {
                        StoreError::Corrupt(format!("stored status {status:?} is unknown"))
                    })?,
                    to_seq(n)?,
                ))
            })
            .transpose()?;
        Ok(Some(found))
    }

    async fn append_run(
        &mut self,
        items: &[(SessionId, u64, &[PreparedEvent])],
        at_ms: i64,
    ) -> Result<Option<Vec<Result<u64, StoreError>>>, StoreError> {
        // A lone request is one round trip with `append_in_one`; a run is three in all.
        if items.len() < 2 {
            return Ok(None);
        }
        let conn = self.conn()?;
        // 1. Lock every session of the run, in id order (so two writers locking overlapping
        //    sets cannot deadlock), and read its state.
        let mut ids: Vec<String> = items.iter().map(|(id, _, _)| id.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT id, status, next_seq FROM sessions WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut **conn)
        .await?;
        // 2. Each request checked in order against the state the requests before it left.
        let plan = plan_append_run(items, rows)?;
        // 3. All events of the accepted requests in one statement.
        if !plan.writes.is_empty() {
            let n = plan.writes.len();
            let (mut sids, mut seqs, mut kinds, mut payloads) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (id, seq, e) in &plan.writes {
                sids.push(id.to_string());
                seqs.push(from_seq(*seq)?);
                kinds.push(e.kind.as_str());
                payloads.push(e.json.as_str());
            }
            sqlx::query(
                "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
                 SELECT t.sid, t.seq, $1, t.kind, t.payload \
                 FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[]) \
                 AS t(sid, seq, kind, payload)",
            )
            .bind(at_ms)
            .bind(sids)
            .bind(seqs)
            .bind(kinds)
            .bind(payloads)
            .execute(&mut **conn)
            .await?;
        }
        // 4. Every advanced session's next seq in one statement.
        if !plan.advanced.is_empty() {
            let mut sids = Vec::with_capacity(plan.advanced.len());
            let mut nexts = Vec::with_capacity(plan.advanced.len());
            for (id, next) in &plan.advanced {
                sids.push(id.to_string());
                nexts.push(from_seq(*next)?);
            }
            let done = sqlx::query(
                "UPDATE sessions SET next_seq = v.next, updated_at_ms = $1 \
                 FROM UNNEST($2::text[], $3::bigint[]) AS v(id, next) WHERE sessions.id = v.id",
            )
            .bind(at_ms)
            .bind(sids)
            .bind(nexts)
            .execute(&mut **conn)
            .await?;
            if done.rows_affected() != plan.advanced.len() as u64 {
                return Err(StoreError::Database(format!(
                    "advanced {} of {} sessions under their row locks",
                    done.rows_affected(),
                    plan.advanced.len()
                )));
            }
        }
        Ok(Some(plan.results))
    }

    async fn advance(
        &mut self,
        id: &SessionId,
        expected: u64,
        next: u64,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET next_seq = $1, updated_at_ms = $2 \
             WHERE id = $3 AND status = 'running' AND next_seq = $4",
        )
        .bind(from_seq(next)?)
        .bind(at_ms)
        .bind(id.to_string())
        .bind(from_seq(expected)?)
        .execute(&mut **self.conn()?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn session_state(
        &mut self,
        id: &SessionId,
    ) -> Result<Option<(SessionStatus, u64)>, StoreError> {
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT status, next_seq FROM sessions WHERE id = $1 FOR UPDATE")
                .bind(id.to_string())
                .fetch_optional(&mut **self.conn()?)
                .await?;
        row.map(|(status, next)| {
            Ok((
                SessionStatus::from_str(&status).map_err(|_| {
                    StoreError::Corrupt(format!("stored status {status:?} is unknown"))
                })?,
                to_seq(next)?,
            ))
        })
        .transpose()
    }

    async fn load_session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(SELECT_SESSION_FOR_UPDATE)
            .bind(id.to_string())
            .fetch_optional(&mut **self.conn()?)
            .await?;
        row.map(session_from_row).transpose()
    }

    async fn insert_session(
        &mut self,
        s: &Session,
        metadata_json: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO sessions (id, parent_id, fork_seq, profile, status, created_at_ms, \
             updated_at_ms, metadata, error, cleanup_error, next_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(s.id.to_string())
        .bind(s.parent.map(|p| p.to_string()))
        .bind(s.fork_seq.map(from_seq).transpose()?)
        .bind(s.profile.as_deref())
        .bind(s.status.as_str())
        .bind(s.created_at_ms)
        .bind(s.updated_at_ms)
        .bind(metadata_json)
        .bind(from_seq(s.next_seq)?)
        .execute(&mut **self.conn()?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_events(
        &mut self,
        id: &SessionId,
        first_seq: u64,
        at_ms: i64,
        events: &[PreparedEvent],
    ) -> Result<(), StoreError> {
        let first = from_seq(first_seq)?;
        let seqs: Vec<i64> = (0..events.len() as i64).map(|i| first + i).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();
        // One round trip for the whole append, however many events it has.
        sqlx::query(
            "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
             SELECT $1, t.seq, $2, t.kind, t.payload \
             FROM UNNEST($3::bigint[], $4::text[], $5::text[]) AS t(seq, kind, payload)",
        )
        .bind(id.to_string())
        .bind(at_ms)
        .bind(seqs)
        .bind(kinds)
        .bind(payloads)
        .execute(&mut **self.conn()?)
        .await?;
        Ok(())
    }

    async fn update_session(
        &mut self,
        id: &SessionId,
        next_seq: u64,
        at_ms: i64,
        status: Option<(SessionStatus, Option<&str>, Option<&str>)>,
    ) -> Result<(), StoreError> {
        let conn = self.conn()?;
        match status {
            None => {
                sqlx::query("UPDATE sessions SET next_seq = $1, updated_at_ms = $2 WHERE id = $3")
                    .bind(from_seq(next_seq)?)
                    .bind(at_ms)
                    .bind(id.to_string())
                    .execute(&mut **conn)
                    .await?;
            }
            Some((st, error, cleanup)) => {
                sqlx::query(
                    "UPDATE sessions SET next_seq = $1, updated_at_ms = $2, status = $3, \
                     error = $4, cleanup_error = $5 WHERE id = $6",
                )
                .bind(from_seq(next_seq)?)
                .bind(at_ms)
                .bind(st.as_str())
                .bind(error)
                .bind(cleanup)
                .bind(id.to_string())
                .execute(&mut **conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn copy_events(
        &mut self,
        from: &SessionId,
        to: &SessionId,
        below: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
             SELECT $1, seq, at_ms, kind, payload FROM events WHERE session_id = $2 AND seq < $3",
        )
        .bind(to.to_string())
        .bind(from.to_string())
        .bind(from_seq(below)?)
        .execute(&mut **self.conn()?)
        .await?;
        Ok(())
    }

    async fn insert_blob(&mut self, address: &BlobAddress, bytes: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blobs (address, size, data) VALUES ($1, $2, $3) \
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(address.as_str())
        .bind(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
        .bind(bytes)
        .execute(&mut **self.conn()?)
        .await?;
        Ok(())
    }

    async fn prunable(
        &mut self,
        retention: &Retention,
        limit: u32,
    ) -> Result<Vec<SessionId>, StoreError> {
        // Row locks make a concurrent fork of a candidate (from another process) wait for us.
        let rows: Vec<(String,)> = sqlx::query_as(concat!(prunable_sql!(), " FOR UPDATE"))
            .bind(retention.ended_before_ms)
            .bind(retention.status.map(|s| s.as_str()))
            .bind(i64::from(limit))
            .fetch_all(&mut **self.conn()?)
            .await?;
        rows.into_iter().map(|(id,)| parse_id(&id)).collect()
    }

    async fn delete_session(&mut self, id: &SessionId) -> Result<u64, StoreError> {
        let conn = self.conn()?;
        let events = sqlx::query("DELETE FROM events WHERE session_id = $1")
            .bind(id.to_string())
            .execute(&mut **conn)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **conn)
            .await?;
        Ok(events.rows_affected())
    }
}

const APPEND_IN_ONE: &str = "WITH s AS ( \
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

const SELECT_SESSION: &str = "SELECT id, parent_id, fork_seq, profile, status, created_at_ms, \
     updated_at_ms, metadata, error, cleanup_error, next_seq FROM sessions WHERE id = $1";

const SELECT_SESSION_FOR_UPDATE: &str = "SELECT id, parent_id, fork_seq, profile, status, \
     created_at_ms, updated_at_ms, metadata, error, cleanup_error, next_seq FROM sessions \
     WHERE id = $1 FOR UPDATE";

const LIST_SESSIONS: &str = "SELECT id, parent_id, fork_seq, profile, status, created_at_ms, \
     updated_at_ms, metadata, error, cleanup_error, next_seq FROM sessions \
     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR profile = $2) \
     AND ($3::bigint IS NULL OR created_at_ms >= $3) AND ($4::bigint IS NULL OR created_at_ms < $4) \
     AND ($5::text IS NULL OR id < $5) ORDER BY id DESC LIMIT $6";

/// One replay chunk of rows.
const REPLAY_CHUNK_SQL: &str = "SELECT seq, at_ms, kind, payload FROM events \
     WHERE session_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3";

/// Replays through the read pool, one chunk of rows per query (see [`replay_stream`]).
fn replay_events(inner: &Inner, session: SessionId, from_seq: u64) -> EventStream {
    let pool = inner.read.clone();
    let sid = session.to_string();
    let exists = {
        let (pool, sid) = (pool.clone(), sid.clone());
        async move {
            let row: Option<(i64,)> = sqlx::query_as("SELECT next_seq FROM sessions WHERE id = $1")
                .bind(sid)
                .fetch_optional(&pool)
                .await?;
            Ok(row.is_some())
        }
        .boxed()
    };
    let fetch: FetchChunk = Box::new(move |from: i64| {
        let (pool, sid) = (pool.clone(), sid.clone());
        async move {
            let rows: Vec<EventRow> = sqlx::query_as(REPLAY_CHUNK_SQL)
                .bind(sid)
                .bind(from)
                .bind(REPLAY_CHUNK)
                .fetch_all(&pool)
                .await?;
            Ok(rows)
        }
        .boxed()
    });
    replay_stream(session, from_seq, exists, fetch)
}

crate::sql::sql_session_store!(PostgresStore);
