//! Criterion micro-benchmarks of the store: one append, and replaying 1,000 events, on the
//! in-memory and SQLite backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentrt_session_store::{
    Durability, MemoryStore, NewEvent, NewSession, SessionId, SessionStore, SqliteConfig,
    SqliteStore,
};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::TryStreamExt;
use serde_json::json;

fn event(i: u64) -> NewEvent {
    NewEvent::new("model.reply", json!({"text": "hello world", "i": i}))
}

async fn filled(store: &dyn SessionStore, n: u64) -> SessionId {
    let id = store.create(NewSession::new()).await.unwrap().id;
    store
        .append(&id, 0, (0..n).map(event).collect())
        .await
        .unwrap();
    id
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryStore::new();
    let sqlite = rt
        .block_on(SqliteStore::open_with(
            dir.path().join("c.db"),
            SqliteConfig {
                durability: Durability::Normal,
                ..SqliteConfig::default()
            },
        ))
        .unwrap();
    let stores: [(&str, &dyn SessionStore); 2] = [("memory", &memory), ("sqlite_normal", &sqlite)];

    for (name, store) in stores {
        let id = rt.block_on(store.create(NewSession::new())).unwrap().id;
        let mut next = 0u64;
        c.bench_function(&format!("append_one/{name}"), |b| {
            b.iter(|| {
                next = rt
                    .block_on(store.append(&id, next, vec![event(next)]))
                    .unwrap();
            })
        });
        let replay_id = rt.block_on(filled(store, 1000));
        c.bench_function(&format!("replay_1000/{name}"), |b| {
            b.iter(|| {
                let v: Vec<_> = rt
                    .block_on(store.replay(&replay_id, 0).try_collect::<Vec<_>>())
                    .unwrap();
                assert_eq!(v.len(), 1000);
            })
        });
    }
}

criterion_group! {
    name = store;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(store);
