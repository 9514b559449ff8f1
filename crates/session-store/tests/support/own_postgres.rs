//! A PostgreSQL server of a test's own: initdb + pg_ctl from the installed server binaries, a
//! temporary directory, a free port, `pg_ctl -w` to wait for readiness. Tests and benchmarks that
//! restart or load a server use it instead of the shared one on 5432. Needs root (the server
//! runs as the `postgres` user); fails, never skips, without the binaries.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server of our own, stopped (immediately) when dropped.
pub struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OwnPostgres {
    /// Creates a cluster in a temporary directory and starts it on a free port; returns once it
    /// accepts connections.
    pub fn start() -> OwnPostgres {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().expect("a PostgreSQL version with pg_ctl");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let chown = Command::new("chown")
            .args(["postgres:postgres", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPostgres {
            bin,
            data,
            port,
            _dir: dir,
        };
        pg.start_again();
        pg
    }

    fn ctl(&self, mode: &str, action: &[&str]) {
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -c max_connections=200",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        let mut args = vec![
            "-D",
            self.data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
            "-w",
            "-m",
            mode,
        ];
        args.extend_from_slice(action);
        as_postgres(&self.bin.join("pg_ctl"), &args);
    }

    /// Restarts the server with a fast shutdown (open connections are cut, transactions in
    /// flight rolled back); returns once it accepts connections again.
    pub fn restart(&self) {
        self.ctl("fast", &["restart"]);
    }

    /// Stops the server the way a crash does (`-m immediate`: every server process quits at
    /// once, no checkpoint; the next start recovers from the WAL); returns once it is down.
    pub fn stop_immediately(&self) {
        self.ctl("immediate", &["stop"]);
    }

    /// Starts the stopped server; returns once it accepts connections (`pg_ctl -w`).
    pub fn start_again(&self) {
        self.ctl("fast", &["start"]);
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}
