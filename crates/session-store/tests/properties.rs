//! Property tests, run against every backend:
//! - arbitrary event sequences appended in arbitrary batch splits replay identically;
//! - concurrent writers to one session never produce a gap or a duplicate seq;
//! - a payload read back as text is the JSON value it was written from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use agentrt_session_store::{
    NewEvent, NewSession, Redactor, SessionStore, StoreConfig, StoreError,
};
use common::Backend;
use futures::TryStreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Number, Value, json};

/// Arbitrary JSON: any string (including control characters and NUL), integers, finite floats,
/// nested arrays and objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn event() -> impl Strategy<Value = NewEvent> {
    // Any kind a store accepts: 1 to 256 bytes, any characters but NUL.
    ("[^\\x00]{1,20}", json_value()).prop_map(|(k, p)| NewEvent::new(k, p))
}

/// Events and the sizes of the batches they are appended in.
fn events_and_splits() -> impl Strategy<Value = (Vec<NewEvent>, Vec<usize>)> {
    prop::collection::vec(event(), 0..30).prop_flat_map(|events| {
        let n = events.len();
        (Just(events), prop::collection::vec(1..6usize, n.max(1)))
    })
}

/// Stores that keep payloads as given (no redaction), so replay must equal input exactly.
fn identity_config() -> StoreConfig {
    StoreConfig::default().with_redactor(Redactor::disabled())
}

async fn backends() -> Vec<Backend> {
    vec![
        common::memory_with(identity_config()).await,
        common::sqlite_with(identity_config()).await,
        common::postgres_with(identity_config()).await,
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn arbitrary_events_in_arbitrary_batches_replay_identically() {
    let rt = runtime();
    let backends = rt.block_on(backends());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let result = runner.run(&events_and_splits(), |(events, splits)| {
        rt.block_on(async {
            for b in &backends {
                let s = &*b.store;
                let id = s.create(NewSession::new()).await.unwrap().id;
                let mut rest = events.clone();
                let mut next = 0u64;
                for size in &splits {
                    if rest.is_empty() {
                        break;
                    }
                    let batch: Vec<NewEvent> = rest.drain(..(*size).min(rest.len())).collect();
                    let len = batch.len() as u64;
                    let got = s.append(&id, next, batch).await.unwrap();
                    prop_assert_eq!(got, next + len);
                    next = got;
                }
                prop_assert!(rest.is_empty());
                let replayed: Vec<_> = s.replay(&id, 0).try_collect().await.unwrap();
                prop_assert_eq!(replayed.len(), events.len(), "[{}]", b.name);
                for (i, (r, e)) in replayed.iter().zip(&events).enumerate() {
                    prop_assert_eq!(r.seq, i as u64);
                    prop_assert_eq!(&r.kind, &e.kind, "[{}] seq {}", b.name, i);
                    prop_assert_eq!(&r.payload, &e.payload, "[{}] seq {}", b.name, i);
                }
            }
            Ok::<(), TestCaseError>(())
        })
    });
    rt.block_on(async {
        for b in backends {
            b.finish().await;
        }
    });
    result.unwrap();
}

/// `writers` tasks each append `per_writer` batches of `batch` events to one session, retrying
/// on conflicts; returns the tags of every acknowledged event.
async fn contend(
    store: Arc<dyn SessionStore>,
    writers: usize,
    per_writer: usize,
    batch: usize,
) -> (agentrt_session_store::SessionId, Vec<String>) {
    let id = store.create(NewSession::new()).await.unwrap().id;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut done = 0;
            let mut expected = 0;
            let mut attempts = 0;
            while done < per_writer && attempts < 100_000 {
                attempts += 1;
                let tags: Vec<String> = (0..batch).map(|i| format!("w{w}-b{done}-e{i}")).collect();
                let events = tags.iter().map(|t| NewEvent::new("e", json!(t))).collect();
                match store.append(&id, expected, events).await {
                    Ok(_) => {
                        acked.extend(tags);
                        done += 1;
                    }
                    Err(StoreError::Conflict { actual, .. }) => expected = actual,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
            assert_eq!(done, per_writer, "writer {w} starved");
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    (id, acked)
}

#[test]
fn concurrent_writers_never_leave_a_gap_or_a_duplicate() {
    let rt = runtime();
    let backends = rt.block_on(backends());
    let mut runner = TestRunner::new(Config {
        cases: 12,
        ..Config::default()
    });
    let result = runner.run(
        &(2..8usize, 1..5usize, 1..4usize),
        |(writers, per, batch)| {
            rt.block_on(async {
                for b in &backends {
                    let (id, acked) = contend(b.store.clone(), writers, per, batch).await;
                    let replayed: Vec<_> = b.store.replay(&id, 0).try_collect().await.unwrap();
                    let seqs: Vec<u64> = replayed.iter().map(|e| e.seq).collect();
                    prop_assert_eq!(
                        seqs,
                        (0..acked.len() as u64).collect::<Vec<_>>(),
                        "[{}]",
                        b.name
                    );
                    let stored: Vec<String> = replayed
                        .iter()
                        .map(|e| e.payload.as_str().unwrap().to_owned())
                        .collect();
                    let unique: HashSet<&String> = stored.iter().collect();
                    prop_assert_eq!(unique.len(), stored.len(), "[{}] duplicate event", b.name);
                    let acked: HashSet<&String> = acked.iter().collect();
                    prop_assert_eq!(unique, acked, "[{}]", b.name);
                    // Batches stay whole and in order.
                    for chunk in stored.chunks(batch) {
                        let prefix = |t: &String| t.rsplit_once("-e").unwrap().0.to_owned();
                        prop_assert!(chunk.iter().all(|t| prefix(t) == prefix(&chunk[0])));
                    }
                }
                Ok::<(), TestCaseError>(())
            })
        },
    );
    rt.block_on(async {
        for b in backends {
            b.finish().await;
        }
    });
    result.unwrap();
}

proptest! {
    /// A payload read back as text behaves as the value it was written from: the text parses to
    /// it, typed parsing agrees with the value, and it serializes back to the same JSON.
    #[test]
    fn a_payload_is_the_json_value_it_was_written_from(value in json_value()) {
        use agentrt_session_store::Payload;
        let text = value.to_string();
        let stored = Payload::from_json(text.clone()).unwrap();
        prop_assert_eq!(stored.json(), text.as_str());
        prop_assert_eq!(&stored, &value);
        prop_assert_eq!(stored.parse::<Value>().unwrap(), value.clone());
        prop_assert_eq!(&stored, &Payload::from(value.clone()));
        let back: Payload = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        prop_assert_eq!(&back, &stored);
        prop_assert_eq!(stored.into_value(), value);
    }
}
