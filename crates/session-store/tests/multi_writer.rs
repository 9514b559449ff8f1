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

/// Appends that reach the writer together (one group-commit batch when they queue up) each get
/// their own outcome: a conflict, an unknown or finished session, or an empty append fails or
/// succeeds alone, and the good appends around them still commit, in order, without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_sqlite_appends_gives_every_member_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("batch.db"))
        .await
        .unwrap();
    let a = store.create(NewSession::new()).await.unwrap().id;
    let b = store.create(NewSession::new()).await.unwrap().id;
    let done = store.create(NewSession::new()).await.unwrap().id;
    store
        .finish(
            &done,
            0,
            agentrt_session_store::Finish::completed(NewEvent::new("end", json!(null))),
        )
        .await
        .unwrap();
    let missing = SessionId::new();
    let ev = |tag: &str| vec![NewEvent::new("e", json!(tag))];
    let (r1, r2, r3, r4, r5, r6, r7) = tokio::join!(
        store.append(
            &a,
            0,
            vec![
                NewEvent::new("e", json!("a0")),
                NewEvent::new("e", json!("a1"))
            ]
        ),
        store.append(&b, 0, ev("b0")),
        store.append(&a, 0, ev("stale")),
        store.append(&missing, 0, ev("nowhere")),
        store.append(&done, 1, ev("late")),
        store.append(&b, 1, Vec::new()),
        store.append(&b, 1, ev("b1")),
    );
    assert_eq!(r1.unwrap(), 2);
    assert_eq!(r2.unwrap(), 1);
    assert!(
        matches!(
            r3,
            Err(StoreError::Conflict {
                expected: 0,
                actual: 2,
                ..
            })
        ),
        "{r3:?}"
    );
    assert!(
        matches!(r4, Err(StoreError::NotFound(id)) if id == missing),
        "{r4:?}"
    );
    assert!(matches!(r5, Err(StoreError::Finished { .. })), "{r5:?}");
    assert_eq!(r6.unwrap(), 1);
    assert_eq!(r7.unwrap(), 2);
    let tags = |id: SessionId| {
        let store = store.clone();
        async move {
            let events: Vec<_> = store.replay(&id, 0).try_collect().await.unwrap();
            events
                .iter()
                .map(|e| (e.seq, e.payload.clone().into_value()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tags(a).await, vec![(0, json!("a0")), (1, json!("a1"))]);
    assert_eq!(tags(b).await, vec![(0, json!("b0")), (1, json!("b1"))]);
    assert_eq!(store.resume_point(&a).await.unwrap().next_seq, 2);
    assert_eq!(store.resume_point(&b).await.unwrap().next_seq, 2);
    assert_eq!(store.resume_point(&done).await.unwrap().next_seq, 1);
}
