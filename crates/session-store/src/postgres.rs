//! The Postgres backend: the same schema and semantics as SQLite, on a Postgres server.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{PreparedEvent, StoreConfig, from_seq};
use crate::error::StoreError;
use crate::migrations;
use crate::sql::conn::{Arg, Row, SqlConn};
use crate::sql::rows::{EventRow, event_from_row, state_from_row};
use crate::sql::statements::{self, POSTGRES, postgres::*};
use crate::sql::writer::{Cmd, StatsCell, WriterStats, plan_append_run, run_writer};
use crate::sql::{REPLAY_CHUNK, end_after_error};
use crate::store::EventStream;
use crate::types::{SessionId, SessionStatus};

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
    /// How long a read or a write waits for a connection when it has none — the server
    /// down, restarting or unreachable — before it fails with [`StoreError::Database`]. A
    /// restart shorter than this is ridden out (the writer reconnects and the write
    /// commits); a caller that would rather fail fast sets it lower. Default 30 s.
    pub acquire_timeout: Duration,
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
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Sets how long a read or a write waits for a connection (see
    /// [`PostgresConfig::acquire_timeout`]).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
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

/// A [`SessionStore`](crate::SessionStore) on a Postgres server.
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
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let mut conn = write_pool.acquire().await?;
        migrations::migrate_postgres(&mut conn).await?;
        let read = PgPoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
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

/// Binds `args` to a Postgres statement, in order.
fn bind<'q>(
    mut q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    args: &[Arg<'_>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for arg in args {
        q = match *arg {
            Arg::Int(v) => q.bind(v),
            Arg::OptInt(v) => q.bind(v),
            Arg::Text(v) => q.bind(v),
            Arg::OptText(v) => q.bind(v),
            Arg::Bytes(v) => q.bind(v),
        };
    }
    q
}

#[async_trait]
impl SqlConn for PgWriter {
    const STATEMENTS: &'static statements::Statements = &POSTGRES;

    async fn begin(&mut self) -> Result<(), StoreError> {
        loop {
            let fresh = self.conn.is_none();
            if fresh {
                self.conn = Some(self.pool.acquire().await?);
            }
            match sqlx::query("BEGIN").execute(&mut **self.conn()?).await {
                Ok(_) => break,
                Err(e) => {
                    // Probably a connection the server closed (a restart): drop it. Nothing of
                    // the batch reached the server yet, so a kept connection's failure is
                    // retried once on a fresh one (the pool waits, up to its acquire timeout,
                    // for a restarting server); a fresh one's failure is the batch's error.
                    if let Some(c) = self.conn.take() {
                        let _closed = c.close().await;
                    }
                    if fresh {
                        return Err(e.into());
                    }
                }
            }
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

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let done = bind(sqlx::query(sql), args)
            .execute(&mut **self.conn()?)
            .await?;
        Ok(done.rows_affected())
    }

    async fn fetch<R: Row>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<R>, StoreError> {
        let rows = bind(sqlx::query(sql), args)
            .fetch_all(&mut **self.conn()?)
            .await?;
        rows.iter()
            .map(|r| R::from_row(r).map_err(StoreError::from))
            .collect()
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
        Ok(Some(row.map(state_from_row).transpose()?))
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
        let rows: Vec<(String, String, i64)> = sqlx::query_as(RUN_STATE)
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
            sqlx::query(RUN_INSERT)
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
            let done = sqlx::query(RUN_ADVANCE)
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

    async fn insert_events(
        &mut self,
        id: &SessionId,
        first_seq: u64,
        at_ms: i64,
        events: &[&PreparedEvent],
    ) -> Result<(), StoreError> {
        let first = from_seq(first_seq)?;
        let seqs: Vec<i64> = (0..events.len() as i64).map(|i| first + i).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let payloads: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();
        // One round trip for the whole append, however many events it has.
        sqlx::query(INSERT_EVENTS)
            .bind(id.to_string())
            .bind(at_ms)
            .bind(seqs)
            .bind(kinds)
            .bind(payloads)
            .execute(&mut **self.conn()?)
            .await?;
        Ok(())
    }
}

/// Replays through the read pool, one chunk of rows per query (see [`replay_stream`]).
fn replay_events(inner: &Inner, session: SessionId, from_seq: u64) -> EventStream {
    let pool = inner.read.clone();
    let sid = session.to_string();
    let exists = {
        let (pool, sid) = (pool.clone(), sid.clone());
        async move {
            let row: Option<(i64,)> = sqlx::query_as(POSTGRES.next_seq)
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
            let rows: Vec<EventRow> = sqlx::query_as(REPLAY_ROWS)
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

/// Fetches one replay chunk starting at a seq: `None` when there are no more events.
pub(crate) type FetchChunk =
    Box<dyn FnMut(i64) -> BoxFuture<'static, Result<Vec<EventRow>, StoreError>> + Send>;

/// Streams a session's events. A producer task reads chunks of rows ahead of the consumer (two
/// chunks in flight) while the consumer parses the payloads, so database reads and JSON parsing
/// overlap.
pub(crate) fn replay_stream(
    session: SessionId,
    from_seq: u64,
    exists: BoxFuture<'static, Result<bool, StoreError>>,
    mut fetch: FetchChunk,
) -> EventStream {
    let producer = async move |tx: mpsc::Sender<Result<Vec<EventRow>, StoreError>>| {
        match exists.await {
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ok(false) => {
                let _ = tx.send(Err(StoreError::NotFound(session))).await;
                return;
            }
            Ok(true) => {}
        }
        let Ok(mut from) = i64::try_from(from_seq) else {
            return;
        };
        loop {
            let rows = match fetch(from).await {
                Ok(rows) if rows.is_empty() => return,
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = rows.len() as i64 >= REPLAY_CHUNK;
            let next = rows.last().map(|r| r.0.saturating_add(1));
            if tx.send(Ok(rows)).await.is_err() {
                return; // the consumer dropped the stream
            }
            match next {
                Some(n) if full => from = n,
                _ => return,
            }
        }
    };
    stream::once(async move {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let (tx, rx) = mpsc::channel(2);
                handle.spawn(producer(tx));
                end_after_error(ReceiverStream::new(rx).flat_map(move |chunk| {
                    match chunk {
                        Ok(rows) => {
                            stream::iter(rows.into_iter().map(move |r| event_from_row(session, r)))
                                .left_stream()
                        }
                        Err(e) => stream::iter(vec![Err(e)]).right_stream(),
                    }
                }))
            }
            Err(_) => stream::iter([Err(StoreError::Database(
                "replay must be polled inside a Tokio runtime".into(),
            ))])
            .boxed(),
        }
    })
    .flatten()
    .boxed()
}

crate::sql::sql_session_store!(PostgresStore, crate::sql::statements::POSTGRES);
