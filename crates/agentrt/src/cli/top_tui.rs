//! The interactive `agentrt top` (ratatui): the sessions table, a session's live event stream,
//! and the keys that steer and cancel — each a [`LoopControl`] posted to the store, so the run
//! may belong to any process.
//!
//! The view is a state machine ([`App`]: keys in, [`Action`]s out, `draw` renders) kept apart
//! from the terminal, so its tests drive it through ratatui's `TestBackend`.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use agentrt::core_loop::LoopControl;
use agentrt::session_store::{SessionId, SessionStore};
use anyhow::Result;
use futures::TryStreamExt;
use ratatui::Frame;
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};

use super::top::{Snapshot, Tracker, rate_text, tree_label};

/// How many lines of a session's event stream are kept.
const STREAM_LINES: usize = 1_000;

/// What the view is doing.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Table,
    /// Typing a steering message for this session.
    Steer {
        session: SessionId,
        input: String,
    },
    /// Asking whether to cancel this session.
    ConfirmCancel {
        session: SessionId,
    },
    /// Showing this session's events as they are committed.
    Stream,
}

/// What a key asks the caller to do.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    None,
    Quit,
    Steer(SessionId, String),
    Cancel(SessionId),
}

/// A session's live event stream: the events read so far, one line each.
#[derive(Debug, Clone, PartialEq)]
struct Stream {
    session: SessionId,
    cursor: u64,
    lines: VecDeque<String>,
}

/// The view's state.
#[derive(Debug)]
pub(super) struct App {
    snapshot: Snapshot,
    selected: usize,
    mode: Mode,
    stream: Option<Stream>,
    /// The last thing done, or why it could not be.
    message: String,
}

impl App {
    pub(super) fn new() -> Self {
        App {
            snapshot: Snapshot {
                running: 0,
                total_rate: None,
                rows: Vec::new(),
            },
            selected: 0,
            mode: Mode::Table,
            stream: None,
            message: "↑/↓ select · Enter events · s steer · c cancel · q quit".to_owned(),
        }
    }

    /// Takes a refresh, keeping the selection on the same session when it is still shown.
    pub(super) fn set_snapshot(&mut self, snapshot: Snapshot) {
        let selected = self.selected_id();
        self.snapshot = snapshot;
        self.selected = selected
            .and_then(|id| self.snapshot.rows.iter().position(|r| r.id == id))
            .unwrap_or(0)
            .min(self.snapshot.rows.len().saturating_sub(1));
    }

    pub(super) fn set_message(&mut self, message: impl Into<String>) {
        self.message = message.into();
    }

    fn selected_id(&self) -> Option<SessionId> {
        self.snapshot.rows.get(self.selected).map(|r| r.id)
    }

    /// The session whose stream is open, and the seq to read from.
    pub(super) fn stream_cursor(&self) -> Option<(SessionId, u64)> {
        self.stream.as_ref().map(|s| (s.session, s.cursor))
    }

    /// Adds events read for the open stream.
    pub(super) fn push_stream(&mut self, events: &[agentrt::session_store::Event]) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        for event in events.iter().filter(|e| e.session_id == stream.session) {
            stream.cursor = event.seq + 1;
            let payload: String = event.payload.json().chars().take(160).collect();
            stream
                .lines
                .push_back(format!("{:>5}  {:<16}  {payload}", event.seq, event.kind));
            if stream.lines.len() > STREAM_LINES {
                stream.lines.pop_front();
            }
        }
    }

    /// Handles one key.
    pub(super) fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::Table) {
            Mode::Steer { session, mut input } => match key.code {
                KeyCode::Enter if !input.trim().is_empty() => {
                    return Action::Steer(session, input);
                }
                KeyCode::Esc => self.message = "steer abandoned".to_owned(),
                KeyCode::Backspace => {
                    input.pop();
                    self.mode = Mode::Steer { session, input };
                }
                KeyCode::Char(c) => {
                    input.push(c);
                    self.mode = Mode::Steer { session, input };
                }
                _ => self.mode = Mode::Steer { session, input },
            },
            Mode::ConfirmCancel { session } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => return Action::Cancel(session),
                _ => self.message = "not cancelled".to_owned(),
            },
            Mode::Stream => match key.code {
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Left => self.stream = None,
                KeyCode::Char('s') => self.start_steer(),
                KeyCode::Char('c') => self.start_cancel(),
                _ => self.mode = Mode::Stream,
            },
            Mode::Table => match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
                KeyCode::Down | KeyCode::Char('j') => {
                    self.selected =
                        (self.selected + 1).min(self.snapshot.rows.len().saturating_sub(1));
                }
                KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
                KeyCode::Enter | KeyCode::Char('e') | KeyCode::Right => {
                    if let Some(session) = self.selected_id() {
                        self.stream = Some(Stream {
                            session,
                            cursor: 0,
                            lines: VecDeque::new(),
                        });
                        self.mode = Mode::Stream;
                    }
                }
                KeyCode::Char('s') => self.start_steer(),
                KeyCode::Char('c') => self.start_cancel(),
                _ => {}
            },
        }
        Action::None
    }

    /// The mode to return to after a steer or cancel was sent or abandoned.
    pub(super) fn done(&mut self) {
        self.mode = if self.stream.is_some() {
            Mode::Stream
        } else {
            Mode::Table
        };
    }

    fn target(&self) -> Option<SessionId> {
        self.stream
            .as_ref()
            .map(|s| s.session)
            .or(self.selected_id())
    }

    fn start_steer(&mut self) {
        match self.target() {
            Some(session) => {
                self.mode = Mode::Steer {
                    session,
                    input: String::new(),
                }
            }
            None => {
                self.message = "no session to steer".to_owned();
                self.done();
            }
        }
    }

    fn start_cancel(&mut self) {
        match self.target() {
            Some(session) => self.mode = Mode::ConfirmCancel { session },
            None => {
                self.message = "no session to cancel".to_owned();
                self.done();
            }
        }
    }

    /// Renders the view.
    pub(super) fn draw(&self, frame: &mut Frame) {
        let [title, body, prompt] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(
            Paragraph::new(format!(
                "agentrt top — {} running sessions, {} events/s in all",
                self.snapshot.running,
                rate_text(self.snapshot.total_rate)
            ))
            .style(Style::new().add_modifier(Modifier::BOLD)),
            title,
        );
        match &self.stream {
            Some(stream) => self.draw_stream(frame, stream, body),
            None => self.draw_table(frame, body),
        }
        let line = match &self.mode {
            Mode::Steer { session, input } => {
                format!("steer {session}: {input}▏ (Enter send · Esc abandon)")
            }
            Mode::ConfirmCancel { session } => format!("cancel {session}? (y/n)"),
            _ => self.message.clone(),
        };
        frame.render_widget(
            Paragraph::new(line).style(Style::new().fg(Color::Yellow)),
            prompt,
        );
    }

    fn draw_table(&self, frame: &mut Frame, area: ratatui::layout::Rect) {
        let header = Row::new([
            "session",
            "status",
            "profile",
            "turns",
            "tokens",
            "dollars",
            "budget left",
            "ev/s",
            "idle",
            "last event",
        ])
        .style(Style::new().add_modifier(Modifier::UNDERLINED));
        let rows = self.snapshot.rows.iter().map(|r| {
            Row::new([
                Cell::from(tree_label(r)),
                Cell::from(r.status.as_str()),
                Cell::from(r.profile.clone()),
                Cell::from(r.turns.to_string()),
                Cell::from(r.tokens.clone()),
                Cell::from(r.dollars.clone()),
                Cell::from(r.budget_left.clone()),
                Cell::from(rate_text(r.events_per_s)),
                Cell::from(format!("{:.0}s", r.idle_s)),
                Cell::from(r.last_event.clone().unwrap_or_else(|| "-".to_owned())),
            ])
        });
        let widths = [
            Constraint::Min(38),
            Constraint::Length(9),
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(22),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(16),
        ];
        let hidden = self
            .snapshot
            .running
            .saturating_sub(self.snapshot.rows.len());
        let title = if hidden > 0 {
            format!(" sessions (and {hidden} more) ")
        } else {
            " sessions ".to_owned()
        };
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("› ");
        let mut state = TableState::default()
            .with_selected((!self.snapshot.rows.is_empty()).then_some(self.selected));
        frame.render_stateful_widget(table, area, &mut state);
    }

    fn draw_stream(&self, frame: &mut Frame, stream: &Stream, area: ratatui::layout::Rect) {
        // The newest events fill the bottom of the pane, as a tail does.
        let inner = area.height.saturating_sub(2) as usize;
        let skip = stream.lines.len().saturating_sub(inner);
        let lines: Vec<Line> = stream
            .lines
            .iter()
            .skip(skip)
            .map(|l| Line::from(l.as_str()))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(format!(
                " events of {} (Esc back · s steer · c cancel) ",
                stream.session
            ))),
            area,
        );
    }
}

/// Posts a control for the view; the message says what happened.
pub(super) async fn send(
    store: &dyn SessionStore,
    session: SessionId,
    control: LoopControl,
) -> String {
    let what = match &control {
        LoopControl::Steer { .. } => "steer",
        LoopControl::Cancel { .. } => "cancel",
    };
    match control.post(store, &session).await {
        Ok(number) => format!("{what} posted to {session} (control #{number})"),
        Err(e) => format!("{what} not posted: {e}"),
    }
}

/// Restores the terminal however the view ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the interactive view until `q` or Ctrl-C.
pub(super) async fn run(
    mut tracker: Tracker,
    interval: Duration,
    limit: usize,
) -> Result<ExitCode> {
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    // Keys are read on a thread of their own (a blocking read) and handed over.
    let (keys_tx, mut keys) = tokio::sync::mpsc::unbounded_channel::<KeyEvent>();
    std::thread::spawn(move || {
        while let Ok(event) = ratatui::crossterm::event::read() {
            if let Event::Key(key) = event
                && keys_tx.send(key).is_err()
            {
                break;
            }
        }
    });
    let mut app = App::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        terminal.draw(|frame| app.draw(frame))?;
        tokio::select! {
            _ = tick.tick() => {
                match tracker.refresh(limit).await {
                    Ok(snapshot) => app.set_snapshot(snapshot),
                    Err(e) => app.set_message(format!("refresh failed: {e:#}")),
                }
                if let Some((session, cursor)) = app.stream_cursor() {
                    let events: Result<Vec<_>, _> =
                        tracker.store().replay(&session, cursor).try_collect().await;
                    match events {
                        Ok(events) => app.push_stream(&events),
                        Err(e) => app.set_message(format!("events of {session}: {e}")),
                    }
                }
            }
            key = keys.recv() => {
                let Some(key) = key else { return Ok(ExitCode::SUCCESS) };
                match app.on_key(key) {
                    Action::None => {}
                    Action::Quit => return Ok(ExitCode::SUCCESS),
                    Action::Steer(session, message) => {
                        let said = send(tracker.store().as_ref(), session, LoopControl::Steer { message }).await;
                        app.set_message(said);
                        app.done();
                    }
                    Action::Cancel(session) => {
                        let control = LoopControl::Cancel { reason: Some("cancelled from agentrt top".to_owned()) };
                        let said = send(tracker.store().as_ref(), session, control).await;
                        app.set_message(said);
                        app.done();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::top::SessionView;
    use super::*;
    use agentrt::session_store::{MemoryStore, NewEvent, NewSession, SessionStatus};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    fn row(id: SessionId, depth: usize, agent: Option<&str>) -> SessionView {
        SessionView {
            id,
            depth,
            agent: agent.map(str::to_owned),
            status: SessionStatus::Running,
            profile: "coder".to_owned(),
            turns: 3,
            tokens: "1.5k+?".to_owned(),
            dollars: "$0.0100".to_owned(),
            budget_left: "47t 498.5ktok".to_owned(),
            events: 12,
            events_per_s: Some(2.5),
            idle_s: 4.0,
            last_event: Some("tool.call".to_owned()),
        }
    }

    /// The screen as text, one string a line.
    fn screen(app: &App) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(190, 12)).expect("test terminal");
        terminal.draw(|f| app.draw(f)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        let width = buffer.area.width as usize;
        buffer
            .content
            .chunks(width)
            .map(|cells| cells.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            assert_eq!(app.on_key(key(KeyCode::Char(c))), Action::None);
        }
    }

    fn two_level_app() -> (App, SessionId, SessionId) {
        let (run, worker) = (SessionId::new(), SessionId::new());
        let mut app = App::new();
        app.set_snapshot(Snapshot {
            running: 3,
            total_rate: Some(7.5),
            rows: vec![row(run, 0, None), row(worker, 1, Some("agent-1"))],
        });
        (app, run, worker)
    }

    #[test]
    fn the_table_shows_every_column_and_the_supervised_tree() {
        let (app, run, worker) = two_level_app();
        let lines = screen(&app);
        assert!(
            lines[0].contains("3 running sessions, 7.5 events/s in all"),
            "{lines:#?}"
        );
        assert!(lines[1].contains("(and 1 more)"), "{lines:#?}");
        let header = &lines[2];
        for column in [
            "session",
            "status",
            "profile",
            "turns",
            "tokens",
            "dollars",
            "budget left",
            "ev/s",
            "idle",
            "last event",
        ] {
            assert!(header.contains(column), "{column} missing: {header}");
        }
        let first = lines
            .iter()
            .find(|l| l.contains(&run.to_string()))
            .expect("run row");
        assert!(first.contains("› "), "the first row is selected: {first}");
        for cell in [
            "running",
            "coder",
            "1.5k+?",
            "$0.0100",
            "47t 498.5ktok",
            "2.5",
            "4s",
            "tool.call",
        ] {
            assert!(first.contains(cell), "{cell} missing: {first}");
        }
        let child = lines
            .iter()
            .find(|l| l.contains(&worker.to_string()))
            .expect("worker row");
        assert!(child.contains(&format!("└ {worker} [agent-1]")), "{child}");
    }

    #[test]
    fn steering_is_typed_on_the_prompt_line_and_sent_with_enter() {
        let (mut app, _, worker) = two_level_app();
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::None);
        assert_eq!(app.on_key(key(KeyCode::Char('s'))), Action::None);
        typed(&mut app, "use the cache");
        app.on_key(key(KeyCode::Backspace));
        let lines = screen(&app);
        assert!(
            lines[11].contains(&format!("steer {worker}: use the cach")),
            "{lines:#?}"
        );
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Steer(worker, "use the cach".to_owned())
        );
        app.set_message("steer posted");
        app.done();
        assert!(screen(&app)[11].contains("steer posted"));
        // An empty message is not sent; Esc abandons.
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert_eq!(app.on_key(key(KeyCode::Esc)), Action::None);
        assert!(screen(&app)[11].contains("steer abandoned"));
    }

    #[test]
    fn cancelling_asks_first_and_only_y_sends_it() {
        let (mut app, run, _) = two_level_app();
        app.on_key(key(KeyCode::Char('c')));
        assert!(screen(&app)[11].contains(&format!("cancel {run}? (y/n)")));
        assert_eq!(app.on_key(key(KeyCode::Char('n'))), Action::None);
        assert!(screen(&app)[11].contains("not cancelled"));
        app.on_key(key(KeyCode::Char('c')));
        assert_eq!(app.on_key(key(KeyCode::Char('y'))), Action::Cancel(run));
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
    }

    #[tokio::test]
    async fn enter_opens_the_live_event_stream_and_steer_posts_a_control() {
        let store = Arc::new(MemoryStore::new());
        let id = store.create(NewSession::new()).await.expect("create").id;
        store
            .append(
                &id,
                0,
                vec![NewEvent::new("turn.started", json!({"turn": 1}))],
            )
            .await
            .expect("append");
        let mut tracker = Tracker::new(store.clone());
        let mut app = App::new();
        app.set_snapshot(tracker.refresh(10).await.expect("refresh"));
        app.on_key(key(KeyCode::Enter));
        let (session, cursor) = app.stream_cursor().expect("stream open");
        assert_eq!((session, cursor), (id, 0));
        let events: Vec<_> = store
            .replay(&id, cursor)
            .try_collect()
            .await
            .expect("replay");
        app.push_stream(&events);
        let lines = screen(&app);
        assert!(lines[1].contains(&format!("events of {id}")), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("turn.started") && l.contains(r#""turn":1"#))
        );
        assert_eq!(app.stream_cursor(), Some((id, 1)));
        // Steering from the stream targets its session, through the store.
        app.on_key(key(KeyCode::Char('s')));
        typed(&mut app, "hi");
        let Action::Steer(target, message) = app.on_key(key(KeyCode::Enter)) else {
            panic!("Enter sends the steer");
        };
        let said = send(store.as_ref(), target, LoopControl::Steer { message }).await;
        assert!(said.contains("control #0"), "{said}");
        let controls = store.controls(&id, 0).await.expect("controls");
        assert_eq!(
            LoopControl::from_store(&controls[0]),
            Some(LoopControl::Steer {
                message: "hi".to_owned()
            })
        );
        app.done();
        app.on_key(key(KeyCode::Esc));
        assert!(app.stream_cursor().is_none(), "Esc closes the stream");
    }
}
