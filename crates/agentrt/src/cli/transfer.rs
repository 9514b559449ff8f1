//! `sessions export` / `sessions import`: a session as JSON Lines, and back into a store; and
//! `sessions replay --follow`, which tails a live session.
//!
//! The file: a `{"type":"session", "session": {...}}` line (the session record), a
//! `{"type":"blob", "address", "text"}` line for the profile the session ran (so `rerun` works in
//! the store it is imported into), then one `{"type":"event", "seq", "at_ms", "kind", "payload"}`
//! line per event, in order.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentrt::session_store::{
    BlobAddress, Finish, NewEvent, NewSession, Session, SessionId, SessionStatus, SessionStore,
};
use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use serde_json::{Value, json};

use super::event_line;

/// Events appended per transaction on import.
const IMPORT_BATCH: usize = 256;

/// Writes session `id` as JSON Lines to `out`; returns the number of events.
pub(super) async fn export(
    store: &Arc<dyn SessionStore>,
    id: &SessionId,
    out: &mut dyn Write,
) -> Result<u64> {
    let session = store.get(id).await?;
    writeln!(out, "{}", json!({"type": "session", "session": session}))?;
    // The profile is kept as a blob under its content address (`sha256:<hex>`).
    if let Some(profile) = &session.profile
        && let Ok(address) = profile.trim_start_matches("sha256:").parse::<BlobAddress>()
        && let Ok(bytes) = store.get_blob(&address).await
        && let Ok(text) = String::from_utf8(bytes)
    {
        writeln!(
            out,
            "{}",
            json!({"type": "blob", "address": profile, "text": text})
        )?;
    }
    let mut events = store.replay(id, 0);
    let mut count = 0;
    while let Some(event) = events.try_next().await? {
        // The event line of `replay`, tagged: its payload text copied as stored.
        let line = event_line(&event)?;
        writeln!(out, r#"{{"type":"event",{}"#, &line[1..])?;
        count += 1;
    }
    Ok(count)
}

/// One line of an export file.
enum Line {
    Session(Box<Session>),
    Blob(String),
    Event(NewEvent),
}

fn parse_line(number: usize, text: &str) -> Result<Line> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("line {number}: not JSON"))?;
    let field = |name: &str| {
        value
            .get(name)
            .cloned()
            .with_context(|| format!("line {number}: no `{name}` field"))
    };
    match value.get("type").and_then(Value::as_str) {
        Some("session") => Ok(Line::Session(Box::new(
            serde_json::from_value(field("session")?)
                .with_context(|| format!("line {number}: the session record"))?,
        ))),
        Some("blob") => Ok(Line::Blob(
            field("text")?
                .as_str()
                .with_context(|| format!("line {number}: `text` is not a string"))?
                .to_owned(),
        )),
        Some("event") => {
            let kind = field("kind")?;
            let kind = kind
                .as_str()
                .with_context(|| format!("line {number}: `kind` is not a string"))?;
            Ok(Line::Event(NewEvent::new(kind, field("payload")?)))
        }
        other => {
            bail!("line {number}: `type` is {other:?}; expected \"session\", \"blob\" or \"event\"")
        }
    }
}

/// Reads an export file into `store`: the session under its own id, its profile blob, its
/// events in order, its final status. Returns the session id and the number of events.
pub(super) async fn import(store: &Arc<dyn SessionStore>, file: &Path) -> Result<(SessionId, u64)> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let mut session: Option<Session> = None;
    let mut blobs = Vec::new();
    let mut events = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(index + 1, &line)? {
            Line::Session(record) if session.is_none() => session = Some(*record),
            Line::Session(_) => bail!("line {}: a second session record", index + 1),
            Line::Blob(text) => blobs.push(text),
            Line::Event(event) => events.push(event),
        }
    }
    let record = session.context(
        "the file has no session record (an `agentrt sessions export` file starts with one)",
    )?;
    for text in blobs {
        store.put_blob(text.as_bytes()).await?;
    }
    let mut new = NewSession::new()
        .with_id(record.id)
        .with_metadata(record.metadata.clone());
    if let Some(profile) = &record.profile {
        new = new.with_profile(profile.clone());
    }
    let created = store
        .create(new)
        .await
        .with_context(|| format!("cannot create session {}", record.id))?;
    let count = events.len() as u64;
    let final_event = (record.status != SessionStatus::Running)
        .then(|| events.pop())
        .flatten();
    let mut seq = created.next_seq;
    let mut pending = events.into_iter().peekable();
    while pending.peek().is_some() {
        let batch: Vec<NewEvent> = pending.by_ref().take(IMPORT_BATCH).collect();
        seq = store.append(&record.id, seq, batch).await?;
    }
    if let Some(final_event) = final_event {
        store
            .finish(
                &record.id,
                seq,
                Finish {
                    status: record.status,
                    final_event,
                    error: record.error.clone(),
                    cleanup_error: record.cleanup_error.clone(),
                    events: Vec::new(),
                },
            )
            .await?;
    }
    Ok((record.id, count))
}

/// Prints session `id`'s events from `from` on as they are committed, until the session is no
/// longer running and every event is printed. Polls every `every`.
pub(super) async fn follow(
    store: &Arc<dyn SessionStore>,
    id: &SessionId,
    mut from: u64,
    every: Duration,
    out: &mut dyn Write,
) -> Result<()> {
    loop {
        // Read the status first: events committed before a final status are all in the replay.
        let running = store.get(id).await?.status == SessionStatus::Running;
        let mut events = store.replay(id, from);
        while let Some(event) = events.try_next().await? {
            writeln!(out, "{}", event_line(&event)?)?;
            from = event.seq + 1;
        }
        out.flush()?;
        if !running {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}
