//! The model flags every command that runs a model shares (`run`, `serve`, `supervise`): where
//! the provider is and how the middleware stack behaves. The model itself is built by the
//! library's `model_from_profile`, so every front door gets the same stack.

use std::time::Duration;

use agentrt::core_loop::model::ModelOptions;
use agentrt::profiles::StackSettings;
use anyhow::{Result, anyhow};
use clap::Args;

/// Provider location and middleware stack overrides. Each stack flag overrides the profile's
/// `[model.stack]` field of the same name; absent in both, the runtime's default applies
/// (connect 10s, first byte 120s, idle 60s, 4 attempts, 32 concurrent calls, no rate limit).
#[derive(Debug, Clone, Default, Args)]
pub(super) struct ModelArgs {
    /// The provider's base URL, instead of the profile's `model.base_url`.
    #[arg(long, env = "AGENTRT_BASE_URL")]
    base_url: Option<String>,
    /// Longest time to connect to the provider (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Longest time from a request to its response's status and headers, per attempt.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    first_byte_timeout: Option<Duration>,
    /// Longest gap between two chunks of a streamed response.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_timeout: Option<Duration>,
    /// Attempts per model call, the first included (1: never retry). Retries happen only
    /// before any output reached the run, and never earlier than a Retry-After asks.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// Model calls streaming at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: Option<u32>,
    /// Model call attempts started per minute.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    requests_per_minute: Option<u32>,
}

fn millis(flag: &str, duration: Option<Duration>) -> Result<Option<u64>> {
    duration
        .map(|d| {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                Err(anyhow!("--{flag} must be at least 1ms"))
            } else {
                Ok(ms)
            }
        })
        .transpose()
}

impl ModelArgs {
    /// The options `model_from_profile` takes: keys and `OPENAI_BASE_URL` from the environment
    /// (never from profile files), then these flags.
    pub(super) fn options(&self) -> Result<ModelOptions> {
        let mut options = ModelOptions::from_env().stack_overrides(StackSettings {
            connect_timeout_ms: millis("connect-timeout", self.connect_timeout)?,
            first_byte_timeout_ms: millis("first-byte-timeout", self.first_byte_timeout)?,
            idle_timeout_ms: millis("idle-timeout", self.idle_timeout)?,
            max_attempts: self.max_attempts,
            max_concurrency: self.max_concurrency,
            requests_per_minute: self.requests_per_minute,
        });
        if let Some(url) = &self.base_url {
            options = options.base_url(url.clone());
        }
        Ok(options)
    }
}
