//! One conformance suite, generic over [`SessionStore`], run against every backend: in-memory,
//! SQLite (a fresh file per test) and the Postgres server (a fresh schema per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use agentrt_session_store::{
    Event, Finish, NewEvent, NewSession, REOPENED_KIND, Retention, SessionFilter, SessionId,
    SessionStatus, SessionStore, StoreError,
};
use common::{Backend, TEST_BLOB_LIMIT, TEST_PAYLOAD_LIMIT, TEST_SECRET};
use futures::TryStreamExt;
use serde_json::{Value, json};

fn ev(kind: &str, n: u64) -> NewEvent {
    NewEvent::new(kind, json!({ "n": n, "text": format!("event {n}") }))
}

async fn replay_all(store: &dyn SessionStore, id: &SessionId, from: u64) -> Vec<Event> {
    store.replay(id, from).try_collect().await.unwrap()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

async fn new_session(store: &dyn SessionStore) -> SessionId {
    store.create(NewSession::new()).await.unwrap().id
}

/// A session with `events` events that then ends with `finish` (one more event).
async fn ended_session(
    store: &dyn SessionStore,
    events: u64,
    finish: fn(NewEvent) -> Finish,
) -> SessionId {
    let id = new_session(store).await;
    let evs = (0..events).map(|n| ev("step", n)).collect();
    store.append(&id, 0, evs).await.unwrap();
    store
        .finish(&id, events, finish(ev("end", events)))
        .await
        .unwrap();
    id
}

fn completed(e: NewEvent) -> Finish {
    Finish::completed(e)
}

fn failed(e: NewEvent) -> Finish {
    Finish::failed(e, json!("boom"))
}

/// A cutoff after every session written so far, and before any written from now on.
async fn cutoff_now(store: &dyn SessionStore, after: &SessionId) -> i64 {
    let t = store.get(after).await.unwrap().updated_at_ms + 1;
    // Sessions written next must end at a later millisecond than the cutoff.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    t
}

async fn is_gone(store: &dyn SessionStore, id: &SessionId) -> bool {
    let gone = |r: &Result<_, StoreError>| matches!(r, Err(StoreError::NotFound(x)) if x == id);
    let get = store.get(id).await.map(|_| ());
    let point = store.resume_point(id).await.map(|_| ());
    let replay = store
        .replay(id, 0)
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ());
    let listed = store
        .list(SessionFilter::new())
        .await
        .unwrap()
        .items
        .iter()
        .any(|s| s.id == *id);
    gone(&get) && gone(&point) && gone(&replay) && !listed
}

mod cases {
    use super::*;

    pub async fn seqs_are_contiguous_from_zero(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        assert_eq!(
            s.append(&id, 0, vec![ev("a", 0), ev("a", 1), ev("a", 2)])
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            s.append(&id, 3, vec![ev("b", 3), ev("b", 4)])
                .await
                .unwrap(),
            5
        );
        let all = replay_all(s, &id, 0).await;
        assert_eq!(seqs(&all), [0, 1, 2, 3, 4]);
        for e in &all {
            assert_eq!(e.session_id, id);
            assert_eq!(e.payload["n"], json!(e.seq));
        }
        assert_eq!(all[3].kind, "b");
        assert_eq!(seqs(&replay_all(s, &id, 3).await), [3, 4]);
        assert!(replay_all(s, &id, 99).await.is_empty());
        let got = s.get(&id).await.unwrap();
        assert_eq!(got.next_seq, 5);
        assert!(got.updated_at_ms >= got.created_at_ms);
    }

    pub async fn replay_of_a_long_session_crosses_read_chunks_in_order(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let n = 20_000u64; // several of the SQL backends' read chunks
        let mut next = 0;
        while next < n {
            let batch = (next..(next + 4000).min(n))
                .map(|i| ev("bulk", i))
                .collect();
            next = s.append(&id, next, batch).await.unwrap();
        }
        let all = replay_all(s, &id, 0).await;
        assert_eq!(seqs(&all), (0..n).collect::<Vec<_>>());
        assert!(all.iter().all(|e| e.payload["n"] == json!(e.seq)));
        let tail = replay_all(s, &id, 12_345).await;
        assert_eq!(seqs(&tail), (12_345..n).collect::<Vec<_>>());
        // A consumer may stop early.
        let first: Vec<Event> = futures::StreamExt::take(s.replay(&id, 0), 3)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(seqs(&first), [0, 1, 2]);
    }

    pub async fn empty_append_only_checks_the_expected_seq(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        assert_eq!(s.append(&id, 0, vec![]).await.unwrap(), 0);
        let err = s.append(&id, 1, vec![]).await.unwrap_err();
        assert!(err.is_conflict(), "{err}");
    }

    pub async fn a_conflicting_append_writes_nothing(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        s.append(&id, 0, vec![ev("a", 0), ev("a", 1)])
            .await
            .unwrap();
        for stale in [0, 1, 5] {
            match s.append(&id, stale, vec![ev("x", 9), ev("x", 9)]).await {
                Err(StoreError::Conflict {
                    session,
                    expected,
                    actual,
                }) => {
                    assert_eq!((session, expected, actual), (id, stale, 2));
                }
                other => panic!("[{}] expected a conflict, got {other:?}", b.name),
            }
        }
        let all = replay_all(s, &id, 0).await;
        assert_eq!(seqs(&all), [0, 1]);
        assert!(all.iter().all(|e| e.kind == "a"));
        assert_eq!(s.resume_point(&id).await.unwrap().next_seq, 2);
    }

    pub async fn finish_commits_the_final_event_and_status_together(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        s.append(&id, 0, vec![ev("a", 0)]).await.unwrap();
        // A stale finish changes nothing: no event, status still running.
        let err = s
            .finish(
                &id,
                0,
                Finish::completed(NewEvent::new("run.completed", json!({}))),
            )
            .await
            .unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(s.get(&id).await.unwrap().status, SessionStatus::Running);
        assert_eq!(replay_all(s, &id, 0).await.len(), 1);

        let fin = s
            .finish(
                &id,
                1,
                Finish::completed(NewEvent::new("run.completed", json!({"ok": true}))),
            )
            .await
            .unwrap();
        assert_eq!((fin.seq, fin.kind.as_str()), (1, "run.completed"));
        let got = s.get(&id).await.unwrap();
        assert_eq!(got.status, SessionStatus::Completed);
        assert_eq!((got.error.clone(), got.cleanup_error.clone()), (None, None));
        let all = replay_all(s, &id, 0).await;
        assert_eq!(all.last().unwrap(), &fin);

        // Finished sessions take nothing more.
        match s.append(&id, 2, vec![ev("late", 2)]).await {
            Err(StoreError::Finished { session, status }) => {
                assert_eq!((session, status), (id, SessionStatus::Completed));
            }
            other => panic!("[{}] expected Finished, got {other:?}", b.name),
        }
        let again = s
            .finish(
                &id,
                2,
                Finish::cancelled(NewEvent::new("run.cancelled", json!({}))),
            )
            .await;
        assert!(
            matches!(again, Err(StoreError::Finished { .. })),
            "{again:?}"
        );
        assert_eq!(s.get(&id).await.unwrap().status, SessionStatus::Completed);
        assert_eq!(replay_all(s, &id, 0).await.len(), 2);
    }

    pub async fn finishing_as_running_is_invalid(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let f = Finish {
            status: SessionStatus::Running,
            final_event: ev("x", 0),
            error: None,
            cleanup_error: None,
            events: Vec::new(),
        };
        assert!(matches!(
            s.finish(&id, 0, f).await,
            Err(StoreError::InvalidInput(_))
        ));
        assert_eq!(s.resume_point(&id).await.unwrap().next_seq, 0);
    }

    pub async fn a_failed_run_is_replayable_with_its_primary_and_cleanup_errors(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        s.append(&id, 0, vec![ev("step", 0)]).await.unwrap();
        let primary = json!({"kind": "model_error", "message": "upstream 500"});
        let cleanup = json!({"kind": "sandbox_teardown", "message": "umount failed"});
        s.finish(
            &id,
            1,
            Finish::failed(
                NewEvent::new("run.failed", json!({"error": primary.clone()})),
                primary.clone(),
            )
            .with_cleanup_error(cleanup.clone()),
        )
        .await
        .unwrap();
        let got = s.get(&id).await.unwrap();
        assert_eq!(got.status, SessionStatus::Failed);
        assert_eq!(
            got.error,
            Some(primary.clone()),
            "the primary error is the error"
        );
        assert_eq!(got.cleanup_error, Some(cleanup));
        let last = replay_all(s, &id, 0).await.pop().unwrap();
        assert_eq!((last.seq, last.kind.as_str()), (1, "run.failed"));
        assert_eq!(last.payload["error"], primary);
    }

    pub async fn reopen_lets_a_loop_continue_a_finished_session(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        s.finish(&id, 0, Finish::failed(ev("run.failed", 0), json!("boom")))
            .await
            .unwrap();
        let re = s.reopen(&id).await.unwrap();
        assert_eq!(
            (re.status, re.next_seq, re.error.clone()),
            (SessionStatus::Running, 2, None)
        );
        let all = replay_all(s, &id, 0).await;
        assert_eq!(all[1].kind, REOPENED_KIND);
        assert_eq!(all[1].payload["previous_status"], json!("failed"));
        assert_eq!(all[1].payload["previous_error"], json!("boom"));
        let rp = s.resume_point(&id).await.unwrap();
        assert_eq!((rp.next_seq, rp.status), (2, SessionStatus::Running));
        assert_eq!(
            s.append(&id, rp.next_seq, vec![ev("retry", 2)])
                .await
                .unwrap(),
            3
        );

        // A running session cannot be reopened.
        assert!(matches!(
            s.reopen(&id).await,
            Err(StoreError::InvalidInput(_))
        ));
        assert_eq!(s.resume_point(&id).await.unwrap().next_seq, 3);

        // A completed one can: its conversation continues after everything it had.
        s.finish(&id, 3, Finish::completed(ev("done", 3)))
            .await
            .unwrap();
        let re = s.reopen(&id).await.unwrap();
        assert_eq!((re.status, re.next_seq), (SessionStatus::Running, 5));
        let all = replay_all(s, &id, 0).await;
        assert_eq!(
            all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["run.failed", REOPENED_KIND, "retry", "done", REOPENED_KIND]
        );
        assert_eq!(all[4].payload["previous_status"], json!("completed"));
    }

    pub async fn resume_point_reports_the_next_seq_and_status(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let rp = s.resume_point(&id).await.unwrap();
        assert_eq!(
            (rp.next_seq, rp.last_seq(), rp.status),
            (0, None, SessionStatus::Running)
        );
        s.append(&id, 0, vec![ev("a", 0), ev("a", 1)])
            .await
            .unwrap();
        let rp = s.resume_point(&id).await.unwrap();
        assert_eq!((rp.next_seq, rp.last_seq()), (2, Some(1)));
        s.finish(&id, 2, Finish::cancelled(ev("cancel", 2)))
            .await
            .unwrap();
        let rp = s.resume_point(&id).await.unwrap();
        assert_eq!((rp.next_seq, rp.status), (3, SessionStatus::Cancelled));
    }

    pub async fn fork_copies_a_prefix_and_leaves_the_parent_unchanged(b: &Backend) {
        let s = &*b.store;
        let parent = s
            .create(
                NewSession::new()
                    .with_profile("sha256:p")
                    .with_metadata(json!({"m": 1})),
            )
            .await
            .unwrap();
        let events: Vec<NewEvent> = (0..5).map(|n| ev("p", n)).collect();
        s.append(&parent.id, 0, events).await.unwrap();
        let before = replay_all(s, &parent.id, 0).await;

        let child = s.fork(&parent.id, 3).await.unwrap();
        assert_ne!(child.id, parent.id);
        assert_eq!((child.parent, child.fork_seq), (Some(parent.id), Some(3)));
        assert_eq!((child.next_seq, child.status), (3, SessionStatus::Running));
        assert_eq!(child.profile.as_deref(), Some("sha256:p"));
        assert_eq!(s.get(&child.id).await.unwrap(), child);
        let copied = replay_all(s, &child.id, 0).await;
        assert_eq!(seqs(&copied), [0, 1, 2]);
        for (c, p) in copied.iter().zip(&before) {
            assert_eq!(
                (c.session_id, &c.kind, &c.payload, c.at_ms),
                (child.id, &p.kind, &p.payload, p.at_ms)
            );
        }
        // The child diverges; the parent does not move.
        assert_eq!(s.append(&child.id, 3, vec![ev("c", 3)]).await.unwrap(), 4);
        assert_eq!(replay_all(s, &parent.id, 0).await, before);
        assert_eq!(s.get(&parent.id).await.unwrap().next_seq, 5);

        let empty = s.fork(&parent.id, 0).await.unwrap();
        assert!(replay_all(s, &empty.id, 0).await.is_empty());
        let whole = s.fork(&parent.id, 5).await.unwrap();
        assert_eq!(replay_all(s, &whole.id, 0).await.len(), 5);
        assert!(matches!(
            s.fork(&parent.id, 6).await,
            Err(StoreError::InvalidInput(_))
        ));
    }

    pub async fn list_filters_by_status_profile_and_time_and_paginates(b: &Backend) {
        let s = &*b.store;
        let mut made = Vec::new();
        for i in 0..7u64 {
            let profile = if i % 2 == 0 {
                "sha256:even"
            } else {
                "sha256:odd"
            };
            let sess = s
                .create(NewSession::new().with_profile(profile))
                .await
                .unwrap();
            if i % 3 == 0 {
                s.finish(&sess.id, 0, Finish::completed(ev("done", 0)))
                    .await
                    .unwrap();
            }
            made.push(sess);
        }
        let all = s.list(SessionFilter::new()).await.unwrap();
        assert_eq!(all.items.len(), 7);
        assert_eq!(all.next_cursor, None);
        let mut newest_first: Vec<SessionId> = made.iter().map(|m| m.id).collect();
        newest_first.sort();
        newest_first.reverse();
        assert_eq!(
            all.items.iter().map(|x| x.id).collect::<Vec<_>>(),
            newest_first
        );

        let completed = s
            .list(SessionFilter::new().status(SessionStatus::Completed))
            .await
            .unwrap();
        assert_eq!(completed.items.len(), 3); // i = 0, 3, 6
        assert!(
            completed
                .items
                .iter()
                .all(|x| x.status == SessionStatus::Completed)
        );
        let even = s
            .list(SessionFilter::new().profile("sha256:even"))
            .await
            .unwrap();
        assert_eq!(even.items.len(), 4);
        let even_running = s
            .list(
                SessionFilter::new()
                    .profile("sha256:even")
                    .status(SessionStatus::Running),
            )
            .await
            .unwrap();
        assert_eq!(even_running.items.len(), 2); // i = 2, 4

        let min = made.iter().map(|m| m.created_at_ms).min().unwrap();
        let max = made.iter().map(|m| m.created_at_ms).max().unwrap();
        let in_range = s
            .list(SessionFilter::new().created_between(min, max + 1))
            .await
            .unwrap();
        assert_eq!(in_range.items.len(), 7);
        let after = s
            .list(SessionFilter::new().created_between(max + 1, max + 10_000))
            .await
            .unwrap();
        assert!(after.items.is_empty());
        let before = s
            .list(SessionFilter::new().created_between(min - 10_000, min))
            .await
            .unwrap();
        assert!(before.items.is_empty());

        // Pages of 3 visit every session exactly once, in order.
        let mut seen = Vec::new();
        let mut filter = SessionFilter::new().limit(3);
        for _ in 0..10 {
            let page = s.list(filter.clone()).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|x| x.id));
            match page.next_cursor {
                Some(c) => filter = filter.after(c),
                None => break,
            }
        }
        assert_eq!(seen, newest_first);

        assert!(matches!(
            s.list(SessionFilter::new().limit(0)).await,
            Err(StoreError::InvalidInput(_))
        ));
        assert!(matches!(
            s.list(SessionFilter::new().after("not-a-cursor")).await,
            Err(StoreError::InvalidInput(_))
        ));
    }

    pub async fn blobs_round_trip_and_corruption_is_detected(b: &Backend) {
        let s = &*b.store;
        let bytes = b"hello blob".to_vec();
        let addr = s.put_blob(&bytes).await.unwrap();
        assert_eq!(addr.as_str().len(), 64);
        assert_eq!(s.put_blob(&bytes).await.unwrap(), addr, "idempotent");
        assert_eq!(s.get_blob(&addr).await.unwrap(), bytes);
        let empty = s.put_blob(&[]).await.unwrap();
        assert_eq!(s.get_blob(&empty).await.unwrap(), Vec::<u8>::new());

        let missing = agentrt_session_store::BlobAddress::of(b"never stored");
        assert!(
            matches!(s.get_blob(&missing).await, Err(StoreError::BlobNotFound(a)) if a == missing)
        );

        let big = vec![7u8; TEST_BLOB_LIMIT + 1];
        assert!(matches!(
            s.put_blob(&big).await,
            Err(StoreError::PayloadTooLarge { size, limit, .. }) if size == TEST_BLOB_LIMIT + 1 && limit == TEST_BLOB_LIMIT
        ));

        if let Some(tamper) = &b.tamper_blob {
            tamper(addr.clone()).await;
            match s.get_blob(&addr).await {
                Err(StoreError::CorruptBlob { address, actual }) => {
                    assert_eq!(address, addr);
                    assert_ne!(actual, addr.as_str());
                }
                other => panic!("[{}] expected CorruptBlob, got {other:?}", b.name),
            }
        }
    }

    pub async fn an_oversized_payload_is_a_typed_error_and_writes_nothing(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let big = NewEvent::new("big", json!("x".repeat(TEST_PAYLOAD_LIMIT)));
        match s.append(&id, 0, vec![ev("ok", 0), big]).await {
            Err(StoreError::PayloadTooLarge { what, size, limit }) => {
                assert!(what.contains("event 1"), "{what}");
                assert!(size > limit);
                assert_eq!(limit, TEST_PAYLOAD_LIMIT);
            }
            other => panic!("[{}] expected PayloadTooLarge, got {other:?}", b.name),
        }
        assert_eq!(s.resume_point(&id).await.unwrap().next_seq, 0);
        assert!(replay_all(s, &id, 0).await.is_empty());
        let meta = NewSession::new().with_metadata(json!("m".repeat(TEST_PAYLOAD_LIMIT + 1)));
        assert!(matches!(
            s.create(meta).await,
            Err(StoreError::PayloadTooLarge { .. })
        ));
        let err = s
            .finish(
                &id,
                0,
                Finish::failed(ev("f", 0), json!("e".repeat(TEST_PAYLOAD_LIMIT + 1))),
            )
            .await;
        assert!(
            matches!(err, Err(StoreError::PayloadTooLarge { .. })),
            "{err:?}"
        );
        assert_eq!(s.get(&id).await.unwrap().status, SessionStatus::Running);
    }

    pub async fn an_unknown_session_is_not_found_everywhere(b: &Backend) {
        let s = &*b.store;
        let id = SessionId::new();
        let nf = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound(x)) if x == id);
        assert!(nf(s.append(&id, 0, vec![ev("a", 0)]).await.map(drop)));
        assert!(nf(s
            .finish(&id, 0, Finish::completed(ev("a", 0)))
            .await
            .map(drop)));
        assert!(nf(s.reopen(&id).await.map(drop)));
        assert!(nf(s.get(&id).await.map(drop)));
        assert!(nf(s.resume_point(&id).await.map(drop)));
        assert!(nf(s.fork(&id, 0).await.map(drop)));
        let replayed: Vec<Result<Event, StoreError>> =
            futures::StreamExt::collect(s.replay(&id, 0)).await;
        assert_eq!(replayed.len(), 1);
        assert!(matches!(&replayed[0], Err(StoreError::NotFound(x)) if *x == id));
    }

    pub async fn bad_requests_are_invalid_input(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let dup = s.create(NewSession::new().with_id(id)).await;
        assert!(matches!(dup, Err(StoreError::InvalidInput(_))), "{dup:?}");
        for kind in [String::new(), "nul\0kind".to_owned(), "k".repeat(257)] {
            let bad = s.append(&id, 0, vec![NewEvent::new(kind, json!(1))]).await;
            assert!(matches!(bad, Err(StoreError::InvalidInput(_))), "{bad:?}");
        }
        let bad_profile = s.create(NewSession::new().with_profile("sha\0")).await;
        assert!(
            matches!(bad_profile, Err(StoreError::InvalidInput(_))),
            "{bad_profile:?}"
        );
        assert_eq!(s.resume_point(&id).await.unwrap().next_seq, 0);
    }

    pub async fn secrets_are_redacted_before_they_are_written(b: &Backend) {
        let s = &*b.store;
        let sess = s
            .create(
                NewSession::new().with_metadata(json!({"key": "sk-ant-api03-METADATASECRET000"})),
            )
            .await
            .unwrap();
        assert!(!sess.metadata.to_string().contains("METADATASECRET"));
        let payload = json!({
            "headers": {"authorization": "Bearer abcdefghijklmnop123456"},
            "note": format!("pw={TEST_SECRET}"),
            "key": "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX",
        });
        s.append(&sess.id, 0, vec![NewEvent::new("model.request", payload)])
            .await
            .unwrap();
        let stored = replay_all(s, &sess.id, 0).await.pop().unwrap();
        let text = stored.payload.to_string();
        for secret in ["abcdefghijklmnop123456", TEST_SECRET, "sk-proj-ABCDEF"] {
            assert!(
                !text.contains(secret),
                "[{}] {secret} reached the store: {text}",
                b.name
            );
        }
        assert_eq!(stored.payload["note"], json!("pw=[REDACTED]"));
        let got = s.get(&sess.id).await.unwrap();
        assert!(!got.metadata.to_string().contains("METADATASECRET"));
    }

    pub async fn concurrent_appenders_on_distinct_sessions_all_commit(b: &Backend) {
        let store = b.store.clone();
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = new_session(&*store).await;
                let mut next = 0;
                for n in 0..15 {
                    next = store.append(&id, next, vec![ev("w", n)]).await.unwrap();
                }
                id
            }));
        }
        for t in tasks {
            let id = t.await.unwrap();
            let all = replay_all(&*store, &id, 0).await;
            assert_eq!(seqs(&all), (0..15).collect::<Vec<_>>());
        }
    }

    /// A burst of appends issued at once (so the writer takes them as one group): each request
    /// gets its own outcome, and a refused one writes nothing and does not disturb the others.
    pub async fn a_burst_of_mixed_appends_answers_each_request_on_its_own(b: &Backend) {
        let s = &*b.store;
        let fresh: Vec<SessionId> =
            futures::future::join_all((0..16).map(|_| new_session(s))).await;
        let shared = new_session(s).await;
        let finished = new_session(s).await;
        s.finish(&finished, 0, Finish::completed(ev("end", 0)))
            .await
            .unwrap();
        let unknown = SessionId::new();
        let mut burst = Vec::new();
        for id in &fresh {
            burst.push((*id, 0, vec![ev("ok", 0), ev("ok", 1)]));
        }
        burst.push((finished, 1, vec![ev("late", 0)]));
        burst.push((unknown, 0, vec![ev("ghost", 0)]));
        burst.push((shared, 7, vec![ev("stale", 0)]));
        // Two writers race for seq 0 of one session: exactly one wins.
        burst.push((shared, 0, vec![ev("race", 0)]));
        burst.push((shared, 0, vec![ev("race", 1)]));
        let outcomes = futures::future::join_all(
            burst
                .iter()
                .map(|(id, at, evs)| s.append(id, *at, evs.clone())),
        )
        .await;
        for (i, id) in fresh.iter().enumerate() {
            assert_eq!(
                outcomes[i].as_ref().ok(),
                Some(&2),
                "[{}] fresh {i}",
                b.name
            );
            assert_eq!(seqs(&replay_all(s, id, 0).await), [0, 1]);
        }
        let n = fresh.len();
        assert!(
            matches!(outcomes[n], Err(StoreError::Finished { session, .. }) if session == finished),
            "[{}] {:?}",
            b.name,
            outcomes[n]
        );
        assert!(
            matches!(outcomes[n + 1], Err(StoreError::NotFound(id)) if id == unknown),
            "[{}] {:?}",
            b.name,
            outcomes[n + 1]
        );
        assert!(
            matches!(
                outcomes[n + 2],
                Err(StoreError::Conflict { expected: 7, .. })
            ),
            "[{}] {:?}",
            b.name,
            outcomes[n + 2]
        );
        let race = [&outcomes[n + 3], &outcomes[n + 4]];
        assert_eq!(
            race.iter().filter(|r| r.is_ok()).count(),
            1,
            "[{}] {race:?}",
            b.name
        );
        assert_eq!(
            race.iter()
                .filter(|r| matches!(r, Err(e) if e.is_conflict()))
                .count(),
            1,
            "[{}] {race:?}",
            b.name
        );
        let shared_events = replay_all(s, &shared, 0).await;
        assert_eq!(seqs(&shared_events), [0]);
        assert_eq!(shared_events[0].kind, "race");
        assert_eq!(seqs(&replay_all(s, &finished, 0).await), [0]);
    }

    pub async fn contending_writers_on_one_session_never_leave_gaps_or_duplicates(b: &Backend) {
        let store = b.store.clone();
        let id = new_session(&*store).await;
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let store: Arc<dyn SessionStore> = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut attempts = 0;
                while mine.len() < 10 && attempts < 10_000 {
                    attempts += 1;
                    let at = store.resume_point(&id).await.unwrap().next_seq;
                    let tag = json!({"writer": w, "i": mine.len()});
                    match store
                        .append(&id, at, vec![NewEvent::new("w", tag.clone())])
                        .await
                    {
                        Ok(_) => mine.push(tag),
                        Err(e) if e.is_conflict() => tokio::task::yield_now().await,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                mine
            }));
        }
        let mut committed: Vec<Value> = Vec::new();
        for t in tasks {
            committed.extend(t.await.unwrap());
        }
        let all = replay_all(&*store, &id, 0).await;
        assert_eq!(seqs(&all), (0..all.len() as u64).collect::<Vec<_>>());
        assert_eq!(all.len(), committed.len());
        let stored: HashSet<String> = all.iter().map(|e| e.payload.to_string()).collect();
        assert_eq!(stored.len(), all.len(), "no event stored twice");
        for c in committed {
            assert!(stored.contains(&c.to_string()));
        }
    }

    pub async fn prune_deletes_sessions_that_ended_before_the_cutoff_with_their_events(
        b: &Backend,
    ) {
        let s = &*b.store;
        let a = ended_session(s, 2, completed).await;
        let f = ended_session(s, 0, failed).await;
        let running = new_session(s).await;
        s.append(&running, 0, vec![ev("step", 0)]).await.unwrap();
        let cutoff = cutoff_now(s, &f).await;
        let late = ended_session(s, 1, completed).await;

        let pruned = s.prune(Retention::ended_before(cutoff)).await.unwrap();
        let mut ids = pruned.sessions.clone();
        ids.sort();
        let mut want = vec![a, f];
        want.sort();
        assert_eq!(ids, want, "[{}]", b.name);
        assert_eq!(pruned.events, 3 + 1, "[{}]", b.name);
        assert!(is_gone(s, &a).await && is_gone(s, &f).await, "[{}]", b.name);
        // A running session is never pruned, however old; a later one is untouched.
        assert_eq!(seqs(&replay_all(s, &running, 0).await), [0]);
        assert_eq!(s.append(&running, 1, vec![ev("step", 1)]).await.unwrap(), 2);
        assert_eq!(seqs(&replay_all(s, &late, 0).await), [0, 1]);
        // Nothing left to do: an empty report, not an error.
        let again = s.prune(Retention::ended_before(cutoff)).await.unwrap();
        assert!(again.sessions.is_empty() && again.events == 0, "{again:?}");
        // A pruned id is free: nothing of the old session lingers.
        let reborn = s.create(NewSession::new().with_id(a)).await.unwrap();
        assert_eq!(reborn.next_seq, 0);
        assert!(replay_all(s, &a, 0).await.is_empty());
    }

    pub async fn prune_selects_by_status_and_stops_at_its_limit_oldest_first(b: &Backend) {
        let s = &*b.store;
        let mut done = Vec::new();
        for _ in 0..3 {
            done.push(ended_session(s, 1, completed).await);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let broken = [
            ended_session(s, 0, failed).await,
            ended_session(s, 0, failed).await,
        ];
        let cutoff = cutoff_now(s, &broken[1]).await;
        let only_failed = Retention::ended_before(cutoff).status(SessionStatus::Failed);
        let mut pruned = s.prune(only_failed).await.unwrap().sessions;
        pruned.sort();
        let mut want = broken.to_vec();
        want.sort();
        assert_eq!(pruned, want, "[{}]", b.name);
        for id in &done {
            assert_eq!(s.get(id).await.unwrap().status, SessionStatus::Completed);
        }
        let first = s
            .prune(Retention::ended_before(cutoff).limit(2))
            .await
            .unwrap();
        assert_eq!(first.sessions, done[..2], "[{}] oldest first", b.name);
        assert_eq!(first.events, 4);
        let rest = s
            .prune(Retention::ended_before(cutoff).limit(2))
            .await
            .unwrap();
        assert_eq!(rest.sessions, done[2..], "[{}]", b.name);
    }

    pub async fn prune_keeps_a_fork_parent_until_its_forks_are_gone(b: &Backend) {
        let s = &*b.store;
        let root = ended_session(s, 2, completed).await;
        let child = s.fork(&root, 2).await.unwrap().id;
        let all = || Retention::ended_before(i64::MAX);
        // The child is running: it stays, and so does the parent it names.
        assert!(s.prune(all()).await.unwrap().sessions.is_empty());
        s.finish(&child, 2, Finish::completed(ev("end", 2)))
            .await
            .unwrap();
        let grandchild = s.fork(&child, 1).await.unwrap().id;
        s.finish(&grandchild, 1, Finish::cancelled(ev("end", 1)))
            .await
            .unwrap();
        // A limit that stops the chain midway leaves the parents of what stays.
        let one = s.prune(all().limit(1)).await.unwrap();
        assert_eq!(one.sessions, [grandchild], "[{}]", b.name);
        assert!(s.get(&child).await.is_ok() && s.get(&root).await.is_ok());
        // One call takes a whole finished chain, leaves first.
        let grandchild2 = s.fork(&child, 3).await.unwrap().id;
        s.finish(&grandchild2, 3, Finish::completed(ev("end", 3)))
            .await
            .unwrap();
        let chain = s.prune(all()).await.unwrap();
        assert_eq!(chain.sessions, [grandchild2, child, root], "[{}]", b.name);
        assert_eq!(chain.events, 4 + 3 + 3, "[{}]", b.name);
        for id in [root, child, grandchild, grandchild2] {
            assert!(is_gone(s, &id).await, "[{}] {id}", b.name);
        }
    }

    pub async fn prune_refuses_a_running_status_and_a_zero_limit(b: &Backend) {
        let s = &*b.store;
        let id = ended_session(s, 0, completed).await;
        for bad in [
            Retention::ended_before(i64::MAX).status(SessionStatus::Running),
            Retention::ended_before(i64::MAX).limit(0),
        ] {
            let r = s.prune(bad.clone()).await;
            assert!(
                matches!(&r, Err(StoreError::InvalidInput(m)) if !m.is_empty()),
                "[{}] {bad:?}: {r:?}",
                b.name
            );
        }
        assert!(s.get(&id).await.is_ok(), "nothing was deleted");
    }

    pub async fn a_session_is_created_with_its_first_events_in_one_write(b: &Backend) {
        let s = &*b.store;
        let created = s
            .create(NewSession::new().with_events(vec![ev("a", 0), ev("a", 1)]))
            .await
            .unwrap();
        assert_eq!(created.next_seq, 2);
        assert_eq!(created.status, SessionStatus::Running);
        let id = created.id;
        assert_eq!(s.get(&id).await.unwrap().next_seq, 2);
        assert_eq!(s.append(&id, 2, vec![ev("b", 2)]).await.unwrap(), 3);
        assert_eq!(seqs(&replay_all(s, &id, 0).await), [0, 1, 2]);
        // A refused create (the id is taken) writes none of its events.
        let again = s
            .create(NewSession::new().with_id(id).with_events(vec![ev("x", 0)]))
            .await;
        assert!(
            matches!(again, Err(StoreError::InvalidInput(_))),
            "{again:?}"
        );
        assert_eq!(seqs(&replay_all(s, &id, 0).await), [0, 1, 2]);
    }

    pub async fn a_finish_commits_its_events_before_the_final_event(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        s.append(&id, 0, vec![ev("a", 0)]).await.unwrap();
        let end = s
            .finish(
                &id,
                1,
                Finish::failed(ev("end", 3), json!("boom"))
                    .with_events(vec![ev("b", 1), ev("b", 2)]),
            )
            .await
            .unwrap();
        assert_eq!(end.seq, 3);
        assert_eq!(end.kind, "end");
        let all = replay_all(s, &id, 0).await;
        assert_eq!(seqs(&all), [0, 1, 2, 3]);
        assert!(all.iter().all(|e| e.payload["n"] == json!(e.seq)));
        let got = s.get(&id).await.unwrap();
        assert_eq!((got.status, got.next_seq), (SessionStatus::Failed, 4));
        assert_eq!(got.error, Some(json!("boom")));
        // A conflicting finish writes none of its events.
        let id2 = new_session(s).await;
        let r = s
            .finish(
                &id2,
                5,
                Finish::completed(ev("end", 1)).with_events(vec![ev("b", 0)]),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
        assert!(replay_all(s, &id2, 0).await.is_empty());
    }

    pub async fn a_session_can_be_created_already_finished(b: &Backend) {
        let s = &*b.store;
        let created = s
            .create(
                NewSession::new()
                    .with_events(vec![ev("a", 0)])
                    .with_finish(Finish::completed(ev("end", 2)).with_events(vec![ev("b", 1)])),
            )
            .await
            .unwrap();
        assert_eq!(created.status, SessionStatus::Completed);
        assert_eq!(created.next_seq, 3);
        let id = created.id;
        let got = s.get(&id).await.unwrap();
        assert_eq!((got.status, got.next_seq), (SessionStatus::Completed, 3));
        let all = replay_all(s, &id, 0).await;
        assert_eq!(seqs(&all), [0, 1, 2]);
        assert_eq!(
            all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["a", "b", "end"]
        );
        let r = s.append(&id, 3, vec![ev("late", 3)]).await;
        assert!(matches!(r, Err(StoreError::Finished { .. })), "{r:?}");
        let r = s
            .create(
                NewSession::new().with_finish(Finish::cancelled(ev("end", 0)).with_events(vec![])),
            )
            .await
            .unwrap();
        assert_eq!((r.status, r.next_seq), (SessionStatus::Cancelled, 1));
        let bad = s
            .create(NewSession::new().with_finish(Finish {
                status: SessionStatus::Running,
                ..Finish::completed(ev("end", 0))
            }))
            .await;
        assert!(matches!(bad, Err(StoreError::InvalidInput(_))), "{bad:?}");
    }

    pub async fn controls_are_numbered_per_session_beside_its_events(b: &Backend) {
        let s = &*b.store;
        let id = new_session(s).await;
        let other = new_session(s).await;
        s.append(&id, 0, vec![ev("step", 0)]).await.unwrap();
        assert!(s.controls(&id, 0).await.unwrap().is_empty(), "[{}]", b.name);
        let steer = s
            .post_control(&id, NewEvent::new("steer", json!({"message": "go left"})))
            .await
            .unwrap();
        let cancel = s
            .post_control(
                &id,
                NewEvent::new("cancel", json!({"reason": format!("pw={TEST_SECRET}")})),
            )
            .await
            .unwrap();
        s.post_control(&other, ev("steer", 9)).await.unwrap();
        assert_eq!((steer.seq, cancel.seq), (0, 1), "[{}]", b.name);
        let all = s.controls(&id, 0).await.unwrap();
        assert_eq!(all, vec![steer.clone(), cancel.clone()], "[{}]", b.name);
        assert_eq!(all[0].payload["message"], json!("go left"));
        // Redacted like an event, before it is written.
        assert_eq!(
            all[1].payload["reason"],
            json!("pw=[REDACTED]"),
            "[{}]",
            b.name
        );
        // Read from a number on; the events are untouched and the loop still appends at its seq.
        assert_eq!(
            s.controls(&id, 1).await.unwrap(),
            vec![cancel],
            "[{}]",
            b.name
        );
        assert!(s.controls(&id, 5).await.unwrap().is_empty());
        assert_eq!(seqs(&replay_all(s, &id, 0).await), [0]);
        assert_eq!(s.append(&id, 1, vec![ev("step", 1)]).await.unwrap(), 2);
    }

    pub async fn controls_go_only_to_running_sessions_and_leave_with_a_pruned_one(b: &Backend) {
        let s = &*b.store;
        let unknown = SessionId::new();
        let posted = s.post_control(&unknown, ev("steer", 0)).await;
        assert!(
            matches!(posted, Err(StoreError::NotFound(x)) if x == unknown),
            "[{}] {posted:?}",
            b.name
        );
        let read = s.controls(&unknown, 0).await;
        assert!(
            matches!(read, Err(StoreError::NotFound(x)) if x == unknown),
            "[{}] {read:?}",
            b.name
        );
        let id = new_session(s).await;
        let empty_kind = s.post_control(&id, NewEvent::new("", json!(null))).await;
        assert!(
            matches!(empty_kind, Err(StoreError::InvalidInput(_))),
            "{empty_kind:?}"
        );
        let big = NewEvent::new("steer", json!("x".repeat(TEST_PAYLOAD_LIMIT + 1)));
        let too_big = s.post_control(&id, big).await;
        assert!(
            matches!(too_big, Err(StoreError::PayloadTooLarge { .. })),
            "{too_big:?}"
        );
        s.post_control(&id, ev("steer", 0)).await.unwrap();
        s.finish(&id, 0, completed(ev("end", 0))).await.unwrap();
        let late = s.post_control(&id, ev("steer", 1)).await;
        assert!(
            matches!(
                late,
                Err(StoreError::Finished {
                    status: SessionStatus::Completed,
                    ..
                })
            ),
            "[{}] {late:?}",
            b.name
        );
        assert_eq!(
            s.controls(&id, 0).await.unwrap().len(),
            1,
            "nothing of the refused ones"
        );
        // A pruned session goes with its controls; its id can be used afresh.
        let cutoff = cutoff_now(s, &id).await;
        let pruned = s.prune(Retention::ended_before(cutoff)).await.unwrap();
        assert_eq!(pruned.sessions, vec![id], "[{}]", b.name);
        s.create(NewSession::new().with_id(id)).await.unwrap();
        assert!(s.controls(&id, 0).await.unwrap().is_empty(), "[{}]", b.name);
    }
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let b = crate::common::$backend().await;
                        crate::cases::$name(&b).await;
                        b.finish().await;
                    }
                };
            }
            case!(seqs_are_contiguous_from_zero);
            case!(replay_of_a_long_session_crosses_read_chunks_in_order);
            case!(empty_append_only_checks_the_expected_seq);
            case!(a_conflicting_append_writes_nothing);
            case!(finish_commits_the_final_event_and_status_together);
            case!(finishing_as_running_is_invalid);
            case!(a_failed_run_is_replayable_with_its_primary_and_cleanup_errors);
            case!(reopen_lets_a_loop_continue_a_finished_session);
            case!(resume_point_reports_the_next_seq_and_status);
            case!(fork_copies_a_prefix_and_leaves_the_parent_unchanged);
            case!(list_filters_by_status_profile_and_time_and_paginates);
            case!(blobs_round_trip_and_corruption_is_detected);
            case!(an_oversized_payload_is_a_typed_error_and_writes_nothing);
            case!(an_unknown_session_is_not_found_everywhere);
            case!(bad_requests_are_invalid_input);
            case!(secrets_are_redacted_before_they_are_written);
            case!(concurrent_appenders_on_distinct_sessions_all_commit);
            case!(contending_writers_on_one_session_never_leave_gaps_or_duplicates);
            case!(a_burst_of_mixed_appends_answers_each_request_on_its_own);
            case!(prune_deletes_sessions_that_ended_before_the_cutoff_with_their_events);
            case!(prune_selects_by_status_and_stops_at_its_limit_oldest_first);
            case!(prune_keeps_a_fork_parent_until_its_forks_are_gone);
            case!(prune_refuses_a_running_status_and_a_zero_limit);
            case!(a_session_is_created_with_its_first_events_in_one_write);
            case!(a_finish_commits_its_events_before_the_final_event);
            case!(a_session_can_be_created_already_finished);
            case!(controls_are_numbered_per_session_beside_its_events);
            case!(controls_go_only_to_running_sessions_and_leave_with_a_pruned_one);
        }
    };
}

conformance!(memory);
conformance!(sqlite);
conformance!(postgres);
