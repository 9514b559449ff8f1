//! Load a profile file, validate it, and print it with its content address.
//!
//! ```text
//! cargo run -p agentrt-profiles --example inspect -- examples/profiles/coding-worker.toml
//! ```
//!
//! On success prints the profile as pretty JSON followed by `content address: sha256:…`.
//! On a bad file prints every problem to stderr and exits with status 1.

use std::process::ExitCode;

use agentrt_profiles::{AgentProfile, ProfileError};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: inspect <profile.toml|profile.json>");
        return ExitCode::from(2);
    };
    match run(std::path::Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let profile = AgentProfile::load(path).map_err(|error| match error {
        // These already name the file.
        ProfileError::Io { .. } | ProfileError::UnsupportedExtension { .. } => error.into(),
        other => anyhow::Error::new(other).context(path.display().to_string()),
    })?;
    println!("{}", serde_json::to_string_pretty(&profile)?);
    println!("content address: {}", profile.content_address());
    Ok(())
}
