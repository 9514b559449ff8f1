//! `agentrt top`: a live view of the running sessions in a store, refreshed until Ctrl-C.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentrt::session_store::{Session, SessionFilter, SessionId, SessionStatus, SessionStore};
use anyhow::Result;
use clap::Args;
use futures::StreamExt;

use super::{StoreArgs, open_store};

/// Arguments of `agentrt top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How often to refresh, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one snapshot and exit (rates need two snapshots, so none are shown).
    #[arg(long)]
    once: bool,
    /// Show at most this many sessions, the most recently active first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// One running session as shown in a frame.
struct Row {
    session: Session,
    last_kind: Option<String>,
    events_per_s: Option<f64>,
}

/// Every running session in the store (all pages).
async fn running_sessions(store: &dyn SessionStore) -> Result<Vec<Session>> {
    let mut all = Vec::new();
    let mut filter = SessionFilter::new()
        .status(SessionStatus::Running)
        .limit(SessionFilter::MAX_LIMIT);
    loop {
        let page = store.list(filter.clone()).await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => filter = filter.after(cursor),
            None => return Ok(all),
        }
    }
}

/// The kind of a session's last committed event.
async fn last_kind(store: &dyn SessionStore, session: &Session) -> Result<Option<String>> {
    let Some(last) = session.next_seq.checked_sub(1) else {
        return Ok(None);
    };
    match store.replay(&session.id, last).next().await {
        Some(event) => Ok(Some(event?.kind)),
        None => Ok(None),
    }
}

/// Runs `agentrt top`.
pub async fn top(args: TopArgs) -> Result<ExitCode> {
    let store = open_store(&args.store.store).await?;
    let tty = std::io::stdout().is_terminal();
    // Each session's event count at the previous frame, for its rate.
    let mut previous: HashMap<SessionId, u64> = HashMap::new();
    let mut previous_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut sessions = running_sessions(&*store).await?;
        let elapsed = previous_at.map(|at| now.duration_since(at).as_secs_f64());
        let total_rate = elapsed.map(|dt| {
            let new: u64 = sessions
                .iter()
                .map(|s| {
                    let before = previous.get(&s.id).copied().unwrap_or(s.next_seq);
                    s.next_seq.saturating_sub(before)
                })
                .sum();
            new as f64 / dt.max(1e-9)
        });
        sessions.sort_by(|a, b| b.updated_at_ms.cmp(&a.updated_at_ms).then(a.id.cmp(&b.id)));
        let running = sessions.len();
        let mut rows = Vec::with_capacity(args.limit.min(running));
        for session in sessions.iter().take(args.limit) {
            let events_per_s = elapsed.and_then(|dt| {
                let before = previous.get(&session.id)?;
                Some(session.next_seq.saturating_sub(*before) as f64 / dt.max(1e-9))
            });
            rows.push(Row {
                last_kind: last_kind(&*store, session).await?,
                session: session.clone(),
                events_per_s,
            });
        }
        let frame = render(running, total_rate, &rows, now_ms());
        {
            let mut out = std::io::stdout().lock();
            if tty {
                // Clear the screen and home the cursor: each frame replaces the last.
                write!(out, "\x1b[2J\x1b[H")?;
            }
            writeln!(out, "{frame}")?;
            out.flush()?;
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        previous = sessions.iter().map(|s| (s.id, s.next_seq)).collect();
        previous_at = Some(now);
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One frame: a summary line, a header, and a line per row. A rate not yet measurable is `-`.
fn render(running: usize, total_rate: Option<f64>, rows: &[Row], now_ms: i64) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
    let mut frame = format!(
        "{running} running sessions, {} events/s in all\n{:<36}  {:>7}  {:>7}  {:>8}  {:<20}  profile",
        rate(total_rate),
        "id",
        "events",
        "ev/s",
        "idle (s)",
        "last event"
    );
    for row in rows {
        let idle_s = (now_ms - row.session.updated_at_ms).max(0) as f64 / 1000.0;
        frame.push_str(&format!(
            "\n{:<36}  {:>7}  {:>7}  {:>8.1}  {:<20}  {}",
            row.session.id.to_string(),
            row.session.next_seq,
            rate(row.events_per_s),
            idle_s,
            row.last_kind.as_deref().unwrap_or("-"),
            row.session.profile.as_deref().unwrap_or("-"),
        ));
    }
    if running > rows.len() {
        frame.push_str(&format!("\n(and {} more)", running - rows.len()));
    }
    frame
}
