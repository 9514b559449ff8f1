//! `agentrt top`: the running sessions of a store — status, profile, turns, tokens, dollars,
//! budget left, event rate, idle time, last event — with a supervised run shown as a tree.
//!
//! On a terminal it is an interactive view (`top_tui`): open a session's live event stream,
//! steer it, cancel it — through the store, so it works on a run started by any process. Piped,
//! or with `--once`, it prints plain text frames for scripts.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt::core_loop::{BudgetSnapshot, RecordedEvent, RuntimeEvent, SessionUsage};
use agentrt::session_store::{Session, SessionFilter, SessionId, SessionStatus, SessionStore};
use anyhow::Result;
use clap::Args;
use futures::TryStreamExt;

use super::{StoreArgs, open_store, profile_names};

/// Arguments of `agentrt top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// How often to refresh, e.g. `1s`, `500ms`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one snapshot as plain text and exit (rates need two snapshots, so none are shown).
    #[arg(long)]
    once: bool,
    /// Show at most this many sessions, the most recently active first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// The metadata key naming the session a session was started under (a supervisor's run for
/// its brain and workers): the tree's parent link.
pub(super) const PARENT_KEY: &str = "parent_session";

/// One running session as shown: a row of the table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SessionView {
    pub(super) id: SessionId,
    /// Depth in the supervised tree (0: a root).
    pub(super) depth: usize,
    /// The agent it runs as under a supervisor (metadata `agent`), if any.
    pub(super) agent: Option<String>,
    pub(super) status: SessionStatus,
    /// The profile's name (or its address when the store does not keep it), or `-`.
    pub(super) profile: String,
    pub(super) turns: u32,
    /// Tokens in and out: a number, `N+?` when some calls did not report theirs.
    pub(super) tokens: String,
    /// Dollars: `$x`, `$x+?` when some calls have no known cost, `-` before any call.
    pub(super) dollars: String,
    /// What is left of each limited budget dimension, or `-`.
    pub(super) budget_left: String,
    pub(super) events: u64,
    pub(super) events_per_s: Option<f64>,
    pub(super) idle_s: f64,
    pub(super) last_event: Option<String>,
}

/// What the events of one session add up to so far, read incrementally.
#[derive(Debug, Default)]
struct Fold {
    /// The seq of the next event to read.
    cursor: u64,
    turns: u32,
    usage: SessionUsage,
    /// The budget's limits from the session's start, until a budget update says more.
    start_budget: Option<agentrt::core_loop::BudgetLimits>,
    snapshot: Option<BudgetSnapshot>,
    last_kind: Option<String>,
}

impl Fold {
    fn take(&mut self, event: &agentrt::session_store::Event) {
        self.cursor = event.seq + 1;
        self.last_kind = Some(event.kind.clone());
        let Some(recorded) = RecordedEvent::from_store(event) else {
            return;
        };
        match recorded.event {
            RuntimeEvent::SessionStarted { budget, .. } => self.start_budget = Some(budget),
            RuntimeEvent::TurnStarted { turn } => self.turns = self.turns.max(turn),
            RuntimeEvent::ModelResponse {
                usage,
                cost_dollars,
                ..
            } => self.usage.add(&usage, cost_dollars),
            RuntimeEvent::BudgetUpdate { snapshot, .. } => self.snapshot = Some(snapshot),
            _ => {}
        }
    }
}

/// Reads a store's running sessions, remembering what it read: each refresh reads only the
/// events committed since the last one.
pub(super) struct Tracker {
    store: Arc<dyn SessionStore>,
    folds: HashMap<SessionId, Fold>,
    names: HashMap<String, String>,
    previous: Option<(Instant, HashMap<SessionId, u64>)>,
}

/// One refresh: how many sessions run, the event rate over all of them, the rows.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Snapshot {
    pub(super) running: usize,
    pub(super) total_rate: Option<f64>,
    pub(super) rows: Vec<SessionView>,
}

impl Tracker {
    pub(super) fn new(store: Arc<dyn SessionStore>) -> Self {
        Tracker {
            store,
            folds: HashMap::new(),
            names: HashMap::new(),
            previous: None,
        }
    }

    pub(super) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Reads the running sessions and what they committed since the last refresh; at most
    /// `limit` rows (whole trees, the most recently active first).
    pub(super) async fn refresh(&mut self, limit: usize) -> Result<Snapshot> {
        let now = Instant::now();
        let sessions = running_sessions(self.store.as_ref()).await?;
        let elapsed = self
            .previous
            .as_ref()
            .map(|(at, _)| now.duration_since(*at).as_secs_f64().max(1e-9));
        let before = |id: &SessionId| self.previous.as_ref().and_then(|(_, m)| m.get(id).copied());
        let total_rate = elapsed.map(|dt| {
            let new: u64 = sessions
                .iter()
                .map(|s| {
                    s.next_seq
                        .saturating_sub(before(&s.id).unwrap_or(s.next_seq))
                })
                .sum();
            new as f64 / dt
        });
        let rates: HashMap<SessionId, f64> = sessions
            .iter()
            .filter_map(|s| {
                let (dt, b) = (elapsed?, before(&s.id)?);
                Some((s.id, s.next_seq.saturating_sub(b) as f64 / dt))
            })
            .collect();
        let ordered = tree_order(&sessions);
        let shown: Vec<(usize, &Session)> = ordered.into_iter().take(limit).collect();
        let missing: Vec<Session> = shown
            .iter()
            .map(|(_, s)| (*s).clone())
            .filter(|s| {
                s.profile
                    .as_ref()
                    .is_some_and(|p| !self.names.contains_key(p))
            })
            .collect();
        self.names
            .extend(profile_names(&self.store, &missing).await);
        let now_ms = now_ms();
        let mut rows = Vec::with_capacity(shown.len());
        for (depth, session) in shown {
            self.catch_up(session).await?;
            let fold = self.folds.get(&session.id);
            rows.push(view(
                session,
                depth,
                fold,
                &self.names,
                rates.get(&session.id).copied(),
                now_ms,
            ));
        }
        let live: HashSet<SessionId> = sessions.iter().map(|s| s.id).collect();
        self.folds.retain(|id, _| live.contains(id));
        self.previous = Some((now, sessions.iter().map(|s| (s.id, s.next_seq)).collect()));
        Ok(Snapshot {
            running: sessions.len(),
            total_rate,
            rows,
        })
    }

    /// Folds the session's events committed since the last look.
    async fn catch_up(&mut self, session: &Session) -> Result<()> {
        let fold = self.folds.entry(session.id).or_default();
        if fold.cursor >= session.next_seq {
            return Ok(());
        }
        let mut events = self.store.replay(&session.id, fold.cursor);
        while let Some(event) = events.try_next().await? {
            fold.take(&event);
        }
        Ok(())
    }
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

/// The session a session names as its parent, when it does.
pub(super) fn parent_of(session: &Session) -> Option<SessionId> {
    session.metadata.get(PARENT_KEY)?.as_str()?.parse().ok()
}

/// The sessions as a forest, each with its depth: a tree's root first, then its children, the
/// most recently active trees (and children) first. A session whose parent is not running is a
/// root.
fn tree_order(sessions: &[Session]) -> Vec<(usize, &Session)> {
    let present: HashSet<SessionId> = sessions.iter().map(|s| s.id).collect();
    let mut children: HashMap<SessionId, Vec<&Session>> = HashMap::new();
    let mut roots = Vec::new();
    for s in sessions {
        match parent_of(s).filter(|p| present.contains(p) && *p != s.id) {
            Some(parent) => children.entry(parent).or_default().push(s),
            None => roots.push(s),
        }
    }
    // A tree is as recent as its most recent member.
    fn latest(s: &Session, children: &HashMap<SessionId, Vec<&Session>>, depth: usize) -> i64 {
        let below = children.get(&s.id).into_iter().flatten();
        below
            .filter(|_| depth < 64)
            .map(|c| latest(c, children, depth + 1))
            .fold(s.updated_at_ms, i64::max)
    }
    let recent_first = |list: &mut Vec<&Session>| {
        list.sort_by(|a, b| {
            latest(b, &children, 0)
                .cmp(&latest(a, &children, 0))
                .then(a.id.cmp(&b.id))
        });
    };
    recent_first(&mut roots);
    let mut out = Vec::with_capacity(sessions.len());
    let mut stack: Vec<(usize, &Session)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    let mut seen = HashSet::new();
    while let Some((depth, s)) = stack.pop() {
        if !seen.insert(s.id) {
            continue;
        }
        out.push((depth, s));
        if let Some(kids) = children.get(&s.id) {
            let mut kids = kids.clone();
            recent_first(&mut kids);
            stack.extend(kids.into_iter().rev().map(|c| (depth + 1, c)));
        }
    }
    out
}

fn view(
    session: &Session,
    depth: usize,
    fold: Option<&Fold>,
    names: &HashMap<String, String>,
    events_per_s: Option<f64>,
    now_ms: i64,
) -> SessionView {
    let empty = Fold::default();
    let fold = fold.unwrap_or(&empty);
    let profile = match session.profile.as_deref() {
        None => "-".to_owned(),
        Some(address) => names
            .get(address)
            .cloned()
            .unwrap_or_else(|| address.to_owned()),
    };
    SessionView {
        id: session.id,
        depth,
        agent: session
            .metadata
            .get("agent")
            .and_then(|a| a.as_str())
            .map(str::to_owned),
        status: session.status,
        profile,
        turns: fold.turns,
        tokens: tokens_text(&fold.usage),
        dollars: dollars_text(&fold.usage),
        budget_left: budget_left(fold),
        events: session.next_seq,
        events_per_s,
        idle_s: (now_ms - session.updated_at_ms).max(0) as f64 / 1000.0,
        last_event: fold.last_kind.clone(),
    }
}

/// A count in few characters: `950`, `12.3k`, `4.1M`.
fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// Tokens used; a lower bound marked `+?` when some calls did not report theirs (unknown is
/// never shown as a number it is not).
fn tokens_text(usage: &SessionUsage) -> String {
    let known = compact(usage.input_tokens + usage.output_tokens);
    if usage.calls_with_unknown_tokens > 0 {
        format!("{known}+?")
    } else {
        known
    }
}

fn dollars_text(usage: &SessionUsage) -> String {
    match (usage.calls, usage.calls_with_unknown_cost) {
        (0, _) => "-".to_owned(),
        (calls, unknown) if unknown == calls => "?".to_owned(),
        (_, 0) => format!("${:.4}", usage.cost_dollars),
        _ => format!("${:.4}+?", usage.cost_dollars),
    }
}

/// What is left of each limited dimension of the session's budget: turns, tokens, dollars,
/// wall time (as of its last budget update).
fn budget_left(fold: &Fold) -> String {
    let (limits, committed, elapsed) = match (&fold.snapshot, &fold.start_budget) {
        (Some(s), _) => (&s.limits, s.committed, s.elapsed),
        (None, Some(limits)) => (limits, agentrt::core_loop::Amounts::ZERO, Duration::ZERO),
        (None, None) => return "-".to_owned(),
    };
    let mut parts = Vec::new();
    if let Some(turns) = limits.turns {
        parts.push(format!("{}t", turns.saturating_sub(committed.turns)));
    }
    if let Some(tokens) = limits.tokens {
        parts.push(format!(
            "{}tok",
            compact(tokens.saturating_sub(committed.tokens))
        ));
    }
    if let Some(dollars) = limits.dollars {
        let spent = committed.nanodollars as f64 / 1e9;
        parts.push(format!("${:.2}", (dollars - spent).max(0.0)));
    }
    if let Some(wall) = limits.wall_time {
        let left = wall.saturating_sub(elapsed).as_secs();
        parts.push(format!("{}m{:02}s", left / 60, left % 60));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn rate_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// The name a row shows: indented by depth in the tree, with the agent it runs as.
pub(super) fn tree_label(row: &SessionView) -> String {
    let indent = if row.depth == 0 {
        String::new()
    } else {
        format!("{}└ ", "  ".repeat(row.depth - 1))
    };
    match &row.agent {
        Some(agent) => format!("{indent}{} [{agent}]", row.id),
        None => format!("{indent}{}", row.id),
    }
}

/// One plain-text frame: a summary line, a header, and a line per row. A rate not yet
/// measurable is `-`.
pub(super) fn render_plain(snapshot: &Snapshot) -> String {
    let mut frame = format!(
        "{} running sessions, {} events/s in all\n{:<36}  {:>7}  {:>7}  {:>8}  {:<20}  {:>5}  {:>8}  {:>10}  {:<20}  profile",
        snapshot.running,
        rate_text(snapshot.total_rate),
        "id",
        "events",
        "ev/s",
        "idle (s)",
        "last event",
        "turns",
        "tokens",
        "dollars",
        "budget left",
    );
    for row in &snapshot.rows {
        frame.push_str(&format!(
            "\n{:<36}  {:>7}  {:>7}  {:>8.1}  {:<20}  {:>5}  {:>8}  {:>10}  {:<20}  {}",
            tree_label(row),
            row.events,
            rate_text(row.events_per_s),
            row.idle_s,
            row.last_event.as_deref().unwrap_or("-"),
            row.turns,
            row.tokens,
            row.dollars,
            row.budget_left,
            row.profile,
        ));
    }
    if snapshot.running > snapshot.rows.len() {
        frame.push_str(&format!(
            "\n(and {} more)",
            snapshot.running - snapshot.rows.len()
        ));
    }
    frame
}

/// Runs `agentrt top`.
pub async fn top(args: TopArgs) -> Result<ExitCode> {
    let store = open_store(&args.store.store).await?;
    let mut tracker = Tracker::new(store);
    let tty = std::io::stdout().is_terminal();
    if tty && !args.once {
        return super::top_tui::run(tracker, args.interval, args.limit).await;
    }
    // One listener for the whole run, not one per frame: a listener sees only the signals that
    // arrive after it first listens, so a Ctrl-C landing while a frame was being read (between
    // two per-frame listeners) was lost and top ran on.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let snapshot = tracker.refresh(args.limit).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", render_plain(&snapshot))?;
            out.flush()?;
        }
        if args.once {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = &mut interrupted => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentrt::session_store::{MemoryStore, NewSession};
    use serde_json::json;

    #[tokio::test]
    async fn a_supervised_run_is_a_tree_under_its_journal_with_agents_named() {
        let store = Arc::new(MemoryStore::new());
        let run = store.create(NewSession::new()).await.expect("run").id;
        let child = |agent: &str| {
            NewSession::new().with_metadata(json!({ PARENT_KEY: run.to_string(), "agent": agent }))
        };
        let brain = store.create(child("supervisor")).await.expect("brain").id;
        let worker = store.create(child("agent-1")).await.expect("worker").id;
        let lone = store.create(NewSession::new()).await.expect("lone").id;
        let mut tracker = Tracker::new(store);
        let snapshot = tracker.refresh(20).await.expect("refresh");
        let order: Vec<(SessionId, usize)> =
            snapshot.rows.iter().map(|r| (r.id, r.depth)).collect();
        // The tree stays together whatever its members' ages; children follow their parent.
        let at = |id| order.iter().position(|(i, _)| *i == id).expect("shown");
        assert_eq!(order[at(run)].1, 0);
        assert_eq!((at(brain) > at(run), order[at(brain)].1), (true, 1));
        assert_eq!((at(worker) > at(run), order[at(worker)].1), (true, 1));
        assert_eq!(order[at(lone)].1, 0);
        let plain = render_plain(&snapshot);
        assert!(plain.contains(&format!("└ {worker} [agent-1]")), "{plain}");
        assert!(
            plain.contains(&format!("└ {brain} [supervisor]")),
            "{plain}"
        );
    }

    #[test]
    fn unknown_usage_is_a_lower_bound_never_a_bare_number() {
        let mut usage = SessionUsage::default();
        assert_eq!(
            (tokens_text(&usage), dollars_text(&usage)),
            ("0".into(), "-".into())
        );
        usage.add(
            &agentrt::core_loop::model::Usage {
                input_tokens: Some(1_500),
                output_tokens: Some(20),
                ..Default::default()
            },
            Some(0.01),
        );
        assert_eq!(tokens_text(&usage), "1.5k");
        assert_eq!(dollars_text(&usage), "$0.0100");
        usage.add(&agentrt::core_loop::model::Usage::default(), None);
        assert_eq!(tokens_text(&usage), "1.5k+?");
        assert_eq!(dollars_text(&usage), "$0.0100+?");
    }
}
