//! Each spawned agent's life is a `spawn_agent {target}` span, a child of whatever span spawned
//! it (the brain's tool call), recording how it settled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agentrt_coordination_mcp::{
    AwaitAgent, AwaitMode, CompletionCheck, Coordinator, ScriptedWorkerFactory, SpawnAgent,
    Supervisor, SupervisorOptions,
};
use agentrt_core_loop::BudgetLimits;
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Closed spans: (name, fields, parent's name).
type Closed = Arc<Mutex<Vec<(String, BTreeMap<String, String>, Option<String>)>>>;

struct Recorder(Closed);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(fields) = ctx.span(id).unwrap().extensions_mut().get_mut::<Fields>() {
            values.record(fields);
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span.extensions().get::<Fields>().map(|f| f.0.clone());
        let parent = span.parent().map(|p| p.name().to_owned());
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), fields.unwrap_or_default(), parent));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_spawned_agent_is_a_spawn_agent_span_under_its_spawner_until_it_settles() {
    let closed = Closed::default();
    let subscriber = tracing_subscriber::registry().with(Recorder(closed.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);
    let supervisor = Supervisor::new(
        Arc::new(ScriptedWorkerFactory::new().turns(2).known_names(["coder"])),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(20)),
    );
    let spawned = supervisor
        .spawn_agent(SpawnAgent {
            profile: Some("coder".into()),
            task: "write it".into(),
            completion_check: Some(CompletionCheck::OutputContains {
                text: "never in the output".into(),
            }),
            ..SpawnAgent::default()
        })
        .instrument(tracing::info_span!("brain"))
        .await
        .unwrap();
    supervisor
        .await_agent(AwaitAgent {
            ids: vec![spawned.id.clone()],
            timeout_ms: 20_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    // The span closes once the agent's task has ended; awaiting the result may return first.
    for _ in 0..1_000 {
        if closed
            .lock()
            .unwrap()
            .iter()
            .any(|(n, ..)| n == "spawn_agent")
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    let closed = closed.lock().unwrap();
    let (_, fields, parent) = closed
        .iter()
        .find(|(name, ..)| name == "spawn_agent")
        .expect("a spawn_agent span");
    assert_eq!(parent.as_deref(), Some("brain"));
    assert_eq!(fields["otel.name"], "spawn_agent coder");
    assert_eq!(fields["gen_ai.agent.name"], "coder");
    assert_eq!(fields["gen_ai.agent.id"], spawned.id.to_string());
    assert_eq!(fields["agentrt.agent.status"], "not_delivered");
    assert!(!fields.contains_key("error.type"), "{fields:?}");
}
