//! What the SQL backends share: every statement ([`statements`], both dialects in one place),
//! the write primitives over a backend's connection ([`conn`]), the group-commit writer
//! ([`writer`]), row decoding ([`rows`]) and the `SessionStore` impl ([`sql_session_store!`]).

pub(crate) mod conn;
pub(crate) mod rows;
pub(crate) mod statements;
pub(crate) mod writer;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::store::EventStream;
use crate::types::Event;
use writer::Cmd;

pub use writer::WriterStats;

/// Ends a replay after its first error: a later event must never be delivered once one before
/// it could not be (the consumer relies on seq order without gaps).
pub(crate) fn end_after_error(
    events: impl futures::Stream<Item = Result<Event, StoreError>> + Send + 'static,
) -> EventStream {
    events
        .scan(false, |failed, event| {
            let item = (!*failed).then(|| {
                *failed = event.is_err();
                event
            });
            futures::future::ready(item)
        })
        .boxed()
}

/// Sends a request to the writer and waits for its durable outcome.
pub(crate) async fn send<T>(
    tx: &mpsc::Sender<Cmd>,
    make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Cmd,
) -> Result<T, StoreError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Rows per chunk when replaying.
pub(crate) const REPLAY_CHUNK: i64 = 8192;

/// The `SessionStore` impl shared by the SQL backends: writes go to the backend's group-commit
/// writer task, reads run `$statements` (the backend's dialect, see [`statements`]) on its read
/// pool. The invoking module supplies `replay_events`, its own way of replaying.
macro_rules! sql_session_store {
    ($store:ty, $statements:path) => {
        const _: () = {
            use $crate::error::StoreError;
            use $crate::rules::{page, verify_blob};
            use $crate::sql::rows::{
                ControlRow, SessionRow, controls_from_rows, session_from_row, state_from_row,
            };
            use $crate::sql::{send, writer::Cmd};
            use $crate::store::{EventStream, SessionStore};
            use $crate::types::{
                BlobAddress, Event, Finish, NewEvent, NewSession, Page, Pruned, ResumePoint,
                Retention, Session, SessionFilter, SessionId,
            };
            use $statements as STATEMENTS;

            #[async_trait::async_trait]
            impl SessionStore for $store {
                async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
                    let session = Box::new(self.inner.config.prepare_session(new)?);
                    send(&self.inner.writer, |reply| Cmd::Create { session, reply }).await
                }

                async fn append(
                    &self,
                    session: &SessionId,
                    expected_seq: u64,
                    events: Vec<NewEvent>,
                ) -> Result<u64, StoreError> {
                    let events = self.inner.config.prepare_events(events)?;
                    send(&self.inner.writer, |reply| Cmd::Append {
                        id: *session,
                        expected: expected_seq,
                        events,
                        reply,
                    })
                    .await
                }

                async fn finish(
                    &self,
                    session: &SessionId,
                    expected_seq: u64,
                    finish: Finish,
                ) -> Result<Event, StoreError> {
                    let finish = Box::new(self.inner.config.prepare_finish(finish)?);
                    send(&self.inner.writer, |reply| Cmd::Finish {
                        id: *session,
                        expected: expected_seq,
                        finish,
                        reply,
                    })
                    .await
                }

                async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError> {
                    send(&self.inner.writer, |reply| Cmd::Reopen {
                        id: *session,
                        reply,
                    })
                    .await
                }

                fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream {
                    replay_events(&self.inner, *session, from_seq)
                }

                async fn get(&self, session: &SessionId) -> Result<Session, StoreError> {
                    let row: Option<SessionRow> = sqlx::query_as(STATEMENTS.select_session)
                        .bind(session.to_string())
                        .fetch_optional(&self.inner.read)
                        .await?;
                    row.map(session_from_row)
                        .transpose()?
                        .ok_or(StoreError::NotFound(*session))
                }

                async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError> {
                    let (limit, cursor) = filter.resolved()?;
                    let rows: Vec<SessionRow> = sqlx::query_as(STATEMENTS.list_sessions)
                        .bind(filter.status.map(|s| s.as_str()))
                        .bind(filter.profile.as_deref())
                        .bind(filter.created_from_ms)
                        .bind(filter.created_before_ms)
                        .bind(cursor.map(|c| c.to_string()))
                        .bind(i64::from(limit) + 1)
                        .fetch_all(&self.inner.read)
                        .await?;
                    let mut items = rows
                        .into_iter()
                        .map(session_from_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(page(&mut items, limit as usize))
                }

                async fn resume_point(
                    &self,
                    session: &SessionId,
                ) -> Result<ResumePoint, StoreError> {
                    let row: Option<(String, i64)> = sqlx::query_as(STATEMENTS.resume_point)
                        .bind(session.to_string())
                        .fetch_optional(&self.inner.read)
                        .await?;
                    let (status, next_seq) =
                        state_from_row(row.ok_or(StoreError::NotFound(*session))?)?;
                    Ok(ResumePoint { next_seq, status })
                }

                async fn fork(
                    &self,
                    session: &SessionId,
                    at_seq: u64,
                ) -> Result<Session, StoreError> {
                    send(&self.inner.writer, |reply| Cmd::Fork {
                        id: *session,
                        at_seq,
                        reply,
                    })
                    .await
                }

                async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError> {
                    let limit = retention.resolved()?;
                    send(&self.inner.writer, |reply| Cmd::Prune {
                        retention,
                        limit,
                        reply,
                    })
                    .await
                }

                async fn post_control(
                    &self,
                    session: &SessionId,
                    control: NewEvent,
                ) -> Result<Event, StoreError> {
                    let control = self.inner.config.prepare_event(0, control)?;
                    send(&self.inner.writer, |reply| Cmd::Control {
                        id: *session,
                        control,
                        reply,
                    })
                    .await
                }

                async fn controls(
                    &self,
                    session: &SessionId,
                    from_seq: u64,
                ) -> Result<Vec<Event>, StoreError> {
                    let rows: Vec<ControlRow> = sqlx::query_as(STATEMENTS.select_controls)
                        .bind(session.to_string())
                        .bind($crate::config::from_seq(from_seq)?)
                        .fetch_all(&self.inner.read)
                        .await?;
                    controls_from_rows(*session, rows)
                }

                async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError> {
                    self.inner.config.check_blob(bytes)?;
                    let address = BlobAddress::of(bytes);
                    let bytes = bytes.to_vec();
                    send(&self.inner.writer, |reply| Cmd::PutBlob {
                        address,
                        bytes,
                        reply,
                    })
                    .await
                }

                async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError> {
                    let row: Option<(Vec<u8>,)> = sqlx::query_as(STATEMENTS.get_blob)
                        .bind(address.as_str())
                        .fetch_optional(&self.inner.read)
                        .await?;
                    let (bytes,) = row.ok_or_else(|| StoreError::BlobNotFound(address.clone()))?;
                    verify_blob(address, bytes)
                }
            }
        };
    };
}
pub(crate) use sql_session_store;
