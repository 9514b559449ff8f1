//! Crash safety of the SQLite backend.
//!
//! The test binary plays two roles. Run normally (by `cargo test`), it is the *parent*: 20 times
//! it starts itself again as a *child* writer, lets it append for a random moment, kills it with
//! SIGKILL, reopens the store and checks that every append the child acknowledged is present,
//! that no batch is partially visible and that seqs are contiguous. Run with
//! `AGENTRT_CRASH_CHILD_DB=<path>`, it is the child: several concurrent writers append batches in
//! a loop and print `ACK <session> <next_seq>` once each append has returned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrt_session_store::{
    NewEvent, NewSession, SessionFilter, SessionId, SessionStore, SqliteStore, StoreError,
};
use futures::TryStreamExt;
use serde_json::json;

const CHILD_ENV: &str = "AGENTRT_CRASH_CHILD_DB";
const TRIALS: usize = 20;
const WRITERS: usize = 4;

/// A small xorshift generator seeded from the clock (no test depends on a particular draw).
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(CHILD_ENV) {
        Ok(path) => rt.block_on(child(Path::new(&path))),
        Err(_) => {
            parent(&rt);
            println!("test crash::sigkill_never_loses_an_acknowledged_append ... ok");
        }
    }
}

async fn child(path: &Path) {
    let store = SqliteStore::open(path)
        .await
        .expect("child opens the store");
    let mut sessions: Vec<SessionId> = store
        .list(SessionFilter::new())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.id)
        .collect();
    while sessions.len() < WRITERS {
        let s = store.create(NewSession::new()).await.unwrap();
        println!("SESSION {}", s.id);
        sessions.push(s.id);
    }
    let mut tasks = Vec::new();
    for (w, id) in sessions.into_iter().take(WRITERS).enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64 + 1);
            let mut next = store.resume_point(&id).await.unwrap().next_seq;
            loop {
                let len = 1 + rng.below(5);
                let events = (0..len)
                    .map(|i| {
                        NewEvent::new(
                            "crash.test",
                            json!({
                                "seq": next + i,
                                "batch_start": next,
                                "batch_len": len,
                                "pad": "x".repeat(rng.below(2000) as usize),
                            }),
                        )
                    })
                    .collect();
                match store.append(&id, next, events).await {
                    Ok(n) => {
                        next = n;
                        println!("ACK {id} {n}");
                    }
                    Err(e) => panic!("child append failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn parent(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(7);
    let started = Instant::now();
    let mut total_acks = 0usize;
    for trial in 0..TRIALS {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        // Wait (bounded) for the child to be writing, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline
            && !lines.lock().unwrap().iter().any(|l| l.starts_with("ACK"))
        {
            if child.try_wait().unwrap().is_some() {
                panic!("trial {trial}: the child writer exited before writing");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();

        let lines = lines.lock().unwrap().clone();
        let mut acked: HashMap<SessionId, u64> = HashMap::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("ACK ") {
                let (id, n) = rest.split_once(' ').unwrap();
                let n: u64 = n.parse().unwrap();
                let e = acked.entry(id.parse().unwrap()).or_default();
                *e = (*e).max(n);
                total_acks += 1;
            }
        }
        assert!(!acked.is_empty(), "trial {trial}: no acknowledged append");
        rt.block_on(verify(&db, &acked, trial));
    }
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "crash trials took {:?}",
        started.elapsed()
    );
    eprintln!(
        "crash: {TRIALS} SIGKILL trials, {total_acks} acknowledged appends verified in {:?}",
        started.elapsed()
    );
}

async fn verify(db: &Path, acked: &HashMap<SessionId, u64>, trial: usize) {
    let store = SqliteStore::open(db)
        .await
        .unwrap_or_else(|e| panic!("trial {trial}: store does not reopen after SIGKILL: {e}"));
    let sessions = store.list(SessionFilter::new()).await.unwrap().items;
    for s in sessions {
        let events: Vec<_> = store
            .replay(&s.id, 0)
            .try_collect()
            .await
            .unwrap_or_else(|e: StoreError| panic!("trial {trial}: replay failed: {e}"));
        let n = events.len() as u64;
        assert_eq!(
            s.next_seq, n,
            "trial {trial}: next_seq disagrees with the events"
        );
        if let Some(&a) = acked.get(&s.id) {
            assert!(
                n >= a,
                "trial {trial}: session {} acknowledged {a} events, has {n}",
                s.id
            );
        }
        let mut i = 0usize;
        while i < events.len() {
            let e = &events[i];
            assert_eq!(e.seq, i as u64, "trial {trial}: seqs not contiguous");
            let start = e.payload["batch_start"].as_u64().unwrap();
            let len = e.payload["batch_len"].as_u64().unwrap();
            assert_eq!(start, e.seq, "trial {trial}: a batch starts in the middle");
            for k in 0..len {
                let m = events
                    .get(i + k as usize)
                    .unwrap_or_else(|| panic!("trial {trial}: batch at {start} partially visible"));
                assert_eq!(m.seq, start + k);
                assert_eq!(m.payload["seq"].as_u64(), Some(start + k));
                assert_eq!(m.payload["batch_start"].as_u64(), Some(start));
            }
            i += len as usize;
        }
    }
}
