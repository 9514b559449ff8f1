//! The SQLite backend: one database file in WAL mode, written by one group-commit writer task.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::mpsc;

use crate::config::{PreparedEvent, StoreConfig, from_seq, to_seq};
use crate::error::StoreError;
use crate::migrations;
use crate::sql::conn::{Arg, Row, SqlConn};
use crate::sql::statements::{self, SQLITE, sqlite::*};
use crate::sql::writer::{Cmd, StatsCell, WriterStats, plan_append_run, run_writer};
use crate::sql::{REPLAY_CHUNK, end_after_error};
use crate::store::EventStream;
use crate::types::{Event, Payload, SessionId};

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL` (the default): the WAL is fsynced at every commit, so an
    /// acknowledged write survives a process kill *and* an operating-system crash or power loss.
    /// Group commit amortises the fsync over every writer in a batch.
    #[default]
    Full,
    /// `synchronous = NORMAL`: the WAL is fsynced only at checkpoints. An acknowledged write
    /// survives the process being killed (SIGKILL: the data is in the OS page cache), but the
    /// last commits may be lost on power loss or an OS crash.
    Normal,
}

/// Settings of a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Redaction and limits.
    pub store: StoreConfig,
    /// Commit durability.
    pub durability: Durability,
    /// Most write requests the writer puts in one transaction. Default 512.
    pub max_batch: usize,
    /// Connections used for reads (replay, get, list). Default 4.
    pub read_connections: u32,
    /// How long a write waits for another process holding the database lock. Default 10 s.
    pub busy_timeout: Duration,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            store: StoreConfig::default(),
            durability: Durability::Full,
            max_batch: 512,
            read_connections: 4,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`SessionStore`](crate::SessionStore) in one SQLite file (WAL mode).
///
/// Reads use a small connection pool; every write goes through one writer task that batches
/// whatever requests are queued into one transaction (group commit) and answers each request
/// only after that transaction committed durably (see [`Durability`]). A request that fails its
/// own checks (conflict, unknown session, finished session) fails alone; the others in its batch
/// still commit.
///
/// Cloning gives another handle to the same store; the writer stops when the last handle is
/// dropped. Several processes may open the same file: the database lock serialises their writers
/// and optimistic seq checks keep their appends consistent.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    read: SqlitePool,
    /// Replay's own connections (see [`Reader`]).
    replay: Arc<Reader>,
    writer: mpsc::Sender<Cmd>,
    config: Arc<StoreConfig>,
    stats: Arc<StatsCell>,
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path` with the default [`SqliteConfig`].
    ///
    /// Errors: [`StoreError::Corrupt`] if the file is not a readable SQLite database,
    /// [`StoreError::SchemaTooNew`] if a newer version of this crate wrote it,
    /// [`StoreError::Database`] for I/O errors.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteConfig::default()).await
    }

    /// Opens (creating if missing) the store at `path` with `config`.
    pub async fn open_with(
        path: impl AsRef<Path>,
        config: SqliteConfig,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let options = connect_options(&path, &config);
        // Processes opening a new file at once contend for it before the busy handler applies
        // (switching a fresh file to WAL, creating the migrations table): SQLite answers
        // SQLITE_BUSY at once. Each try either completes or leaves what another committed, so
        // the open is tried again, with a growing pause, until the busy timeout has passed.
        let deadline = std::time::Instant::now() + config.busy_timeout;
        let mut pause = Duration::from_millis(5);
        let (write_pool, conn) = loop {
            match open_writer(&options).await {
                Ok(opened) => break opened,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        // Migrated: from here on the writer writes through its own connection.
        drop(conn);
        write_pool.close().await;
        let writer = SqliteWriter::open(&path, &config)?;
        let read = SqlitePoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .connect_with(options)
            .await?;
        let store_config = Arc::new(config.store.clone());
        let stats = Arc::new(StatsCell::default());
        let (tx, rx) = mpsc::channel(config.max_batch.max(1) * 4);
        spawn_writer(run_writer(
            writer,
            rx,
            store_config.clone(),
            config.max_batch.max(1),
            stats.clone(),
        ))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                replay: Arc::new(Reader::new(&path, &config)),
                path,
                read,
                writer: tx,
                config: store_config,
                stats,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters of the group-commit writer (how many requests shared each transaction).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.stats.snapshot()
    }
}

/// The writer's pool and connection, with the schema brought up to date.
async fn open_writer(
    options: &SqliteConnectOptions,
) -> Result<(SqlitePool, PoolConnection<Sqlite>), StoreError> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .connect_with(options.clone())
        .await?;
    let mut conn = pool.acquire().await?;
    migrations::migrate_sqlite(&mut conn).await?;
    Ok((pool, conn))
}

/// Runs the writer on a thread of its own: it steps SQLite itself, blocking (fsync included),
/// and must never hold up the caller's runtime. The thread ends with the writer, when the last
/// store handle is dropped.
fn spawn_writer(
    writer: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| StoreError::Database(format!("starting the SQLite writer: {e}")))?;
    std::thread::Builder::new()
        .name("agentrt-sqlite-writer".into())
        .spawn(move || runtime.block_on(writer))
        .map_err(|e| StoreError::Database(format!("starting the SQLite writer thread: {e}")))?;
    Ok(())
}

/// Whether `error` is SQLite's "database is locked" (SQLITE_BUSY, code 5).
fn is_busy(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(message)
        if message.contains("(code: 5)") || message.contains("database is locked"))
}

pub(crate) fn connect_options(path: &Path, config: &SqliteConfig) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match config.durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .foreign_keys(true)
        .busy_timeout(config.busy_timeout)
}

/// The writer's own connection: a plain SQLite connection, driven on the writer's thread.
///
/// Through sqlx every statement is a round trip to the connection's worker thread (a channel
/// send, a thread wake-up, and a wake-up back), and a commit runs four to six statements; on
/// this project's machines those hops cost more than the statements (~20 context switches per
/// commit). The writer task runs on a thread of its own (see `spawn_writer`) and
/// steps every statement itself, so a commit costs one wake-up each way.
struct SqliteWriter {
    path: PathBuf,
    durability: Durability,
    busy_timeout: Duration,
    /// `None` after a rollback: the next batch opens a fresh connection.
    conn: Option<rusqlite::Connection>,
    in_tx: bool,
}

impl SqliteWriter {
    fn open(path: &Path, config: &SqliteConfig) -> Result<Self, StoreError> {
        let mut writer = SqliteWriter {
            path: path.to_path_buf(),
            durability: config.durability,
            busy_timeout: config.busy_timeout,
            conn: None,
            in_tx: false,
        };
        writer.conn = Some(writer.connect()?);
        Ok(writer)
    }

    /// A write connection with the store's settings (the schema is already migrated, and WAL
    /// mode is a property of the file).
    fn connect(&self) -> Result<rusqlite::Connection, StoreError> {
        let conn = open_existing(&self.path, self.busy_timeout)?;
        let synchronous = match self.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(from_rusqlite)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(from_rusqlite)?;
        // Every statement the writer runs stays prepared (the shared ones and the multi-row
        // insert sizes).
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn conn(&mut self) -> Result<&rusqlite::Connection, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        self.conn.as_ref().ok_or(StoreError::Closed)
    }
}

/// A plain connection to the store's (existing, migrated) file, waiting up to `busy_timeout` for
/// another process's lock. Read-write without create: a read-only handle cannot open a WAL
/// database whose -shm file is missing.
fn open_existing(path: &Path, busy_timeout: Duration) -> Result<rusqlite::Connection, StoreError> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(from_rusqlite)?;
    conn.busy_timeout(busy_timeout).map_err(from_rusqlite)?;
    Ok(conn)
}

/// Binds `args` to a prepared statement: `$N` parameters by their number, `?` ones in order.
fn bind(stmt: &mut rusqlite::CachedStatement<'_>, args: &[Arg<'_>]) -> Result<(), StoreError> {
    for i in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(i)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(i);
        let arg = *args.get(n.wrapping_sub(1)).ok_or_else(|| {
            StoreError::Database(format!("statement parameter {n} has no argument"))
        })?;
        let bound = match arg {
            Arg::Int(v) => stmt.raw_bind_parameter(i, v),
            Arg::OptInt(v) => stmt.raw_bind_parameter(i, v),
            Arg::Text(v) => stmt.raw_bind_parameter(i, v),
            Arg::OptText(v) => stmt.raw_bind_parameter(i, v),
            Arg::Bytes(v) => stmt.raw_bind_parameter(i, v),
        };
        bound.map_err(from_rusqlite)?;
    }
    Ok(())
}

/// Runs `sql` with `args` on `conn`; returns how many rows it changed.
fn execute(conn: &rusqlite::Connection, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(from_rusqlite)?;
    bind(&mut stmt, args)?;
    let changed = stmt.raw_execute().map_err(from_rusqlite)?;
    Ok(changed as u64)
}

/// Runs query `sql` with `args` on `conn`; returns its rows.
fn fetch<R: Row>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<Vec<R>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(from_rusqlite)?;
    bind(&mut stmt, args)?;
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(from_rusqlite)? {
        out.push(R::try_from(row).map_err(from_rusqlite)?);
    }
    Ok(out)
}

#[async_trait]
impl SqlConn for SqliteWriter {
    const STATEMENTS: &'static statements::Statements = &SQLITE;

    async fn begin(&mut self) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock now, so the seq checks below see the latest commit of
        // any other process and nobody can commit in between.
        self.conn()?
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(from_rusqlite)?;
        self.in_tx = true;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.conn()?
            .execute_batch("COMMIT")
            .map_err(from_rusqlite)?;
        self.in_tx = false;
        Ok(())
    }

    async fn rollback(&mut self) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        // A batch rolls back only when the database failed it (a refused request fails alone),
        // so the connection is not reused: the next batch opens a fresh one, which sees the
        // file as it is now (a filesystem turned read-only answers SQLITE_READONLY to a new
        // connection, where the old one only repeats its I/O error).
        if let Some(c) = self.conn.take()
            && !c.is_autocommit()
        {
            let _rolled_back = c.execute_batch("ROLLBACK");
        }
    }

    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        execute(self.conn()?, sql, args)
    }

    async fn fetch<R: Row>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<R>, StoreError> {
        fetch(self.conn()?, sql, args)
    }

    async fn append_run(
        &mut self,
        items: &[(SessionId, u64, &[PreparedEvent])],
        at_ms: i64,
    ) -> Result<Option<Vec<Result<u64, StoreError>>>, StoreError> {
        let conn = self.conn()?;
        // 1. The state of every session of the run, in one statement.
        let mut ids: Vec<String> = items.iter().map(|(id, _, _)| id.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let ids_json = serde_json::to_string(&ids)
            .map_err(|e| StoreError::Database(format!("encoding session ids: {e}")))?;
        let rows: Vec<(String, String, i64)> = fetch(conn, RUN_STATE, &[Arg::Text(&ids_json)])?;
        // 2. Each request checked in order against the state the requests before it left.
        let plan = plan_append_run(items, rows)?;
        // 3. All events of the accepted requests, in multi-row inserts.
        insert_rows(conn, &plan.writes, at_ms)?;
        // 4. Every advanced session's next seq, in one statement.
        let advanced: Vec<(String, i64)> = plan
            .advanced
            .iter()
            .map(|(id, next)| Ok((id.to_string(), from_seq(*next)?)))
            .collect::<Result<_, StoreError>>()?;
        if !advanced.is_empty() {
            let json = serde_json::to_string(&advanced)
                .map_err(|e| StoreError::Database(format!("encoding session seqs: {e}")))?;
            let done = execute(conn, RUN_ADVANCE, &[Arg::Text(&json), Arg::Int(at_ms)])?;
            if done != advanced.len() as u64 {
                return Err(StoreError::Database(format!(
                    "advanced {done} of {} sessions under the write lock",
                    advanced.len()
                )));
            }
        }
        Ok(Some(plan.results))
    }

    /// One multi-row insert per chunk instead of one statement per event: a run's first and
    /// last commits each carry half a dozen events.
    async fn insert_events(
        &mut self,
        id: &SessionId,
        first_seq: u64,
        at_ms: i64,
        events: &[&PreparedEvent],
    ) -> Result<(), StoreError> {
        let rows: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (id, first_seq + i as u64, *e))
            .collect();
        insert_rows(self.conn()?, &rows, at_ms)
    }
}

/// Inserts event rows `(session, seq, event)`, all committed at `at_ms`, in multi-row inserts.
fn insert_rows(
    conn: &rusqlite::Connection,
    rows: &[(&SessionId, u64, &PreparedEvent)],
    at_ms: i64,
) -> Result<(), StoreError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (n, sql) = insert_chunk(rest.len());
        let (chunk, tail) = rest.split_at(n);
        let mut stmt = conn.prepare_cached(sql).map_err(from_rusqlite)?;
        let mut i = 0;
        for (id, seq, e) in chunk {
            let (id, seq) = (id.to_string(), from_seq(*seq)?);
            let values: [&dyn rusqlite::ToSql; 5] = [&id, &seq, &at_ms, &e.kind, &e.json];
            for v in values {
                i += 1;
                stmt.raw_bind_parameter(i, v).map_err(from_rusqlite)?;
            }
        }
        stmt.raw_execute().map_err(from_rusqlite)?;
        rest = tail;
    }
    Ok(())
}

/// The largest power of two of rows (at most [`MAX_INSERT_ROWS`]) not above `n`, and the
/// multi-row event insert for that many rows. Power-of-two sizes keep the statement cache small.
fn insert_chunk(n: usize) -> (usize, &'static str) {
    static SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..=MAX_INSERT_ROWS.trailing_zeros())
            .map(|k| {
                let rows = vec![EVENT_ROW; 1 << k].join(", ");
                format!("{INSERT_EVENTS}{rows}")
            })
            .collect()
    });
    let k = (usize::BITS - 1 - n.clamp(1, MAX_INSERT_ROWS).leading_zeros()) as usize;
    (1 << k, SQL[k].as_str())
}

/// Most rows in one multi-row insert (5 bound values each, far below SQLite's variable limit).
const MAX_INSERT_ROWS: usize = 256;

/// Replay's read connections: plain SQLite connections used on blocking threads.
///
/// Replay is the one read that moves many rows. Through sqlx every row crosses from its SQLite
/// worker thread to the async side on its own (a channel hop and an owned copy per row), which
/// capped replay near 0.4 M events/s even without JSON parsing. Here a blocking thread steps the
/// statement itself and hands over whole chunks of rows ([`RawChunk`]).
struct Reader {
    path: PathBuf,
    busy_timeout: Duration,
    /// Idle connections, reused so a replay does not reopen the file and re-read the schema.
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
    /// At most `read_connections` chunk reads at once (as for the sqlx read pool).
    permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Reader {
    fn new(path: &Path, config: &SqliteConfig) -> Self {
        Reader {
            path: path.to_path_buf(),
            busy_timeout: config.busy_timeout,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(tokio::sync::Semaphore::new(
                config.read_connections.max(1) as usize
            )),
        }
    }

    fn open(&self) -> Result<rusqlite::Connection, StoreError> {
        // Read-write (see `open_existing`); `query_only` keeps this connection from writing.
        let conn = open_existing(&self.path, self.busy_timeout)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(from_rusqlite)?;
        Ok(conn)
    }

    /// Runs `f` on an idle (or new) connection on a blocking thread.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = this.idle_conns().pop();
            let conn = match idle {
                Some(c) => c,
                None => this.open()?,
            };
            let r = f(&conn);
            // A connection that failed at the database level is not reused.
            if !matches!(r, Err(StoreError::Database(_) | StoreError::Corrupt(_))) {
                this.idle_conns().push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::Database(format!("replay read task failed: {e}")))?
    }

    fn idle_conns(&self) -> std::sync::MutexGuard<'_, Vec<rusqlite::Connection>> {
        // The list stays consistent even if a holder panicked: take it back.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn from_rusqlite(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) =>
        {
            StoreError::Corrupt(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull => {
            StoreError::DiskFull(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ReadOnly => {
            StoreError::ReadOnly(e.to_string())
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// Chunk reads in flight at once: while the consumer takes one chunk, the next ones are read
/// and parsed on other threads.
const REPLAY_AHEAD: usize = 3;

/// One chunk of event rows as read: the text of every row's kind and payload in one buffer, so
/// reading a row allocates nothing. The events are built from it by the consumer, on its own
/// thread, as it takes them: an event's allocations are then made and (typically) freed by the
/// same thread, which keeps the allocator on its fast thread-local path.
struct RawChunk {
    session: SessionId,
    /// Each row's kind then payload, back to back.
    text: String,
    /// seq, at_ms, end of the kind in `text`, end of the payload in `text`.
    rows: Vec<(i64, i64, usize, usize)>,
    /// A damaged row that ended the read: delivered after the good rows before it.
    error: Option<StoreError>,
}

impl RawChunk {
    fn into_events(mut self) -> impl Iterator<Item = Result<Event, StoreError>> + Send {
        let error = self.error.take();
        let mut start = 0;
        let events = (0..self.rows.len()).map(move |i| {
            let (seq, at_ms, kind_end, payload_end) = self.rows[i];
            let kind = self.text.get(start..kind_end).unwrap_or_default();
            let payload = self.text.get(kind_end..payload_end).unwrap_or_default();
            start = payload_end;
            Ok(Event {
                session_id: self.session,
                seq: to_seq(seq)?,
                at_ms,
                kind: kind.to_owned(),
                payload: Payload::from_checked(payload),
            })
        });
        events.chain(error.map(Err))
    }
}

fn read_range(
    conn: &rusqlite::Connection,
    session: SessionId,
    sid: &str,
    from: i64,
    below: i64,
) -> Result<RawChunk, StoreError> {
    let mut stmt = conn.prepare_cached(REPLAY_RANGE).map_err(from_rusqlite)?;
    let mut rows = stmt.query((sid, from, below)).map_err(from_rusqlite)?;
    let n = usize::try_from(below - from).unwrap_or(0);
    let mut chunk = RawChunk {
        session,
        text: String::with_capacity(n * 256),
        rows: Vec::with_capacity(n),
        error: None,
    };
    // A row that cannot be read ends the chunk; the rows before it are still delivered.
    loop {
        let row_start = chunk.text.len();
        let read = rows.next().map_err(from_rusqlite).and_then(|row| {
            let Some(row) = row else { return Ok(false) };
            let text = |i: usize| -> Result<&str, StoreError> {
                row.get_ref(i)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(from_rusqlite)
            };
            let seq = row.get(0).map_err(from_rusqlite)?;
            let at_ms = row.get(1).map_err(from_rusqlite)?;
            chunk.text.push_str(text(2)?);
            let kind_end = chunk.text.len();
            let payload = text(3)?;
            // Checked here, on the reading thread, so the consumer only copies text.
            crate::types::check_json(payload)?;
            chunk.text.push_str(payload);
            chunk.rows.push((seq, at_ms, kind_end, chunk.text.len()));
            Ok(true)
        });
        match read {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                chunk.text.truncate(row_start);
                chunk.error = Some(e);
                break;
            }
        }
    }
    Ok(chunk)
}

/// Replays on the [`Reader`]: the session's next seq is read first, then the seqs from
/// `from_seq` up to it are read in chunks of [`REPLAY_CHUNK`] seqs, [`REPLAY_AHEAD`] at a time,
/// each on a blocking thread. Memory stays bounded by those few chunks.
fn replay_events(inner: &Inner, session: SessionId, from_seq: u64) -> EventStream {
    use futures::{StreamExt, stream};
    let reader = inner.replay.clone();
    stream::once(async move {
        if tokio::runtime::Handle::try_current().is_err() {
            return stream::iter([Err(StoreError::Database(
                "replay must be polled inside a Tokio runtime".into(),
            ))])
            .boxed();
        }
        let sid = session.to_string();
        let next = {
            let sid = sid.clone();
            reader
                .run(move |conn| {
                    conn.prepare_cached(SQLITE.next_seq)
                        .and_then(|mut q| {
                            q.query_row([sid.as_str()], |r| r.get::<_, i64>(0))
                                .map(Some)
                                .or_else(|e| match e {
                                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                                    e => Err(e),
                                })
                        })
                        .map_err(from_rusqlite)
                })
                .await
        };
        let next = match next {
            Ok(Some(next)) => next,
            Ok(None) => return stream::iter([Err(StoreError::NotFound(session))]).boxed(),
            Err(e) => return stream::iter([Err(e)]).boxed(),
        };
        // Seqs beyond i64 cannot be stored: nothing to replay from there.
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let starts = (from..next).step_by(REPLAY_CHUNK as usize);
        let chunks = stream::iter(starts)
            .map(move |start| {
                let (reader, sid) = (reader.clone(), sid.clone());
                let below = start.saturating_add(REPLAY_CHUNK).min(next);
                async move {
                    reader
                        .run(move |conn| read_range(conn, session, &sid, start, below))
                        .await
                }
            })
            .buffered(REPLAY_AHEAD);
        end_after_error(chunks.flat_map(|chunk| match chunk {
            Ok(rows) => stream::iter(rows.into_events()).left_stream(),
            Err(e) => stream::iter(vec![Err(e)]).right_stream(),
        }))
    })
    .flatten()
    .boxed()
}

crate::sql::sql_session_store!(SqliteStore, crate::sql::statements::SQLITE);
