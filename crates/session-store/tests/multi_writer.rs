//! Two independent store handles (two writer tasks, as two processes would have) on one
//! database contend for one session: optimistic checks still give contiguous seqs, no
//! duplicates, and every loser gets a typed conflict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use agentrt_session_store::{
    NewEvent, NewSession, PostgresConfig, PostgresStore, SessionId, SessionStore, SqliteStore,
    StoreError,
};
use futures::TryStreamExt;
use serde_json::json;

async fn contend(stores: [Arc<dyn SessionStore>; 2], id: SessionId) -> (usize, usize) {
    let mut tasks = Vec::new();
    for (h, store) in stores.into_iter().enumerate() {
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut conflicts, mut expected) = (0, 0, 0);
                let mut attempts = 0;
                while done < 10 && attempts < 100_000 {
                    attempts += 1;
                    let tag = format!("h{h}-w{w}-{done}");
                    let events = vec![
                        NewEvent::new("a", json!(tag.clone())),
                        NewEvent::new("b", json!(tag)),
                    ];
                    match store.append(&id, expected, events).await {
                        Ok(n) => {
                            expected = n;
                            done += 1;
                        }
                        Err(StoreError::Conflict { actual, .. }) => {
                            conflicts += 1;
                            expected = actual;
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                assert_eq!(done, 10);
                conflicts
            }));
        }
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    (2 * 4 * 10, conflicts)
}

async fn check(store: &dyn SessionStore, id: &SessionId, appends: usize) {
    let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
    assert_eq!(events.len(), appends * 2);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    let mut tags = HashSet::new();
    for pair in events.chunks(2) {
        assert_eq!((pair[0].kind.as_str(), pair[1].kind.as_str()), ("a", "b"));
        assert_eq!(pair[0].payload, pair[1].payload, "an append was split");
        assert!(
            tags.insert(pair[0].payload.to_string()),
            "an append was stored twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_handles_on_one_file_keep_one_session_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let id = a.create(NewSession::new()).await.unwrap().id;
    let (appends, _) = contend([Arc::new(a.clone()), Arc::new(b)], id).await;
    check(&a, &id, appends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_handles_on_one_schema_keep_one_session_consistent() {
    let url = common::pg_url();
    let schema = common::fresh_schema();
    let config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
    let a = PostgresStore::connect_with(config.clone())
        .await
        .expect("Postgres is required (AGENTRT_PG_URL)");
    let b = PostgresStore::connect_with(config).await.unwrap();
    let id = a.create(NewSession::new()).await.unwrap().id;
    let (appends, _) = contend([Arc::new(a.clone()), Arc::new(b)], id).await;
    check(&a, &id, appends).await;
    drop(a);
    common::drop_schema(&url, &schema).await;
}
