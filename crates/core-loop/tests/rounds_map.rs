//! `map_with_concurrency`: bounded, in input order, and it stops launching on abort.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentrt_core_loop::{LoopError, map_with_concurrency};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn results_come_back_in_input_order_when_items_finish_out_of_order() {
    // Earlier items sleep longer, so they finish last.
    let delays: Vec<u64> = vec![40, 30, 20, 10, 0, 25, 5];
    let out = map_with_concurrency(
        delays.clone(),
        4,
        &CancellationToken::new(),
        |i, d| async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            (i, d)
        },
    )
    .await
    .unwrap();
    assert!(!out.aborted());
    let results = out.into_complete().unwrap();
    assert_eq!(
        results,
        delays.iter().copied().enumerate().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn in_flight_items_never_exceed_the_limit() {
    let gauge = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let out = map_with_concurrency(
        (0..24u64).collect(),
        3,
        &CancellationToken::new(),
        |_, n| {
            let gauge = gauge.clone();
            let peak = peak.clone();
            async move {
                let now = gauge.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1 + n % 4)).await;
                gauge.fetch_sub(1, Ordering::SeqCst);
                n * 2
            }
        },
    )
    .await
    .unwrap();
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    // The map fills every free slot before waiting, so the limit is reached.
    assert_eq!(out.peak_in_flight, 3);
    assert_eq!(
        out.into_complete().unwrap(),
        (0..24u64).map(|n| n * 2).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn abort_stops_launching_and_reports_the_items_not_started() {
    let cancel = CancellationToken::new();
    let started = Arc::new(AtomicUsize::new(0));
    let out = map_with_concurrency((0..10usize).collect(), 2, &cancel, |i, n| {
        let cancel = cancel.clone();
        let started = started.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            if i == 3 {
                cancel.cancel();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            n
        }
    })
    .await
    .unwrap();
    assert!(out.aborted());
    // Items 0..=3 started (item 3 cancelled while item 2 could still be in flight); at most one
    // more was already launched before item 3 first ran.
    let started = started.load(Ordering::SeqCst);
    assert!((4..=5).contains(&started), "started {started}");
    assert_eq!(out.not_started, (started..10).collect::<Vec<_>>());
    for (i, r) in out.results.iter().enumerate() {
        assert_eq!(r.is_some(), i < started, "slot {i}");
    }
    assert_eq!(out.clone().into_complete(), None);
}

#[tokio::test]
async fn items_already_started_run_to_their_end_after_abort() {
    let cancel = CancellationToken::new();
    let out = map_with_concurrency(vec![0usize, 1, 2], 3, &cancel, |i, _| {
        let cancel = cancel.clone();
        async move {
            if i == 0 {
                cancel.cancel();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            i
        }
    })
    .await
    .unwrap();
    // All three were launched before the first one ran, so all three finished.
    assert_eq!(out.results, vec![Some(0), Some(1), Some(2)]);
    assert!(out.not_started.is_empty());
}

#[tokio::test]
async fn a_cancelled_token_starts_nothing() {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = map_with_concurrency(vec![1, 2, 3], 2, &cancel, |_, n| async move { n })
        .await
        .unwrap();
    assert_eq!(out.results, vec![None, None, None]);
    assert_eq!(out.not_started, vec![0, 1, 2]);
    assert_eq!(out.peak_in_flight, 0);
}

#[tokio::test]
async fn zero_concurrency_is_a_configuration_error() {
    let err = map_with_concurrency(
        vec![1],
        0,
        &CancellationToken::new(),
        |_, n| async move { n },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("max_concurrency")),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_input_gives_an_empty_outcome() {
    let out = map_with_concurrency(
        Vec::<u8>::new(),
        2,
        &CancellationToken::new(),
        |_, n| async move { n },
    )
    .await
    .unwrap();
    assert!(out.results.is_empty());
    assert!(!out.aborted());
}
