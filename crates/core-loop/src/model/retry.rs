//! Retry of model calls as a tower [`Policy`]: only failures to open the stream, only the
//! transient kinds, with exponential backoff, jitter and `Retry-After`.

use std::time::Duration;

use rand::Rng;
use tower::retry::Policy;

use super::types::{ChatRequest, ChatStream};
use crate::LoopError;

/// When and how often to retry a model call.
///
/// Retried: [`LoopError::RateLimited`] (429), [`LoopError::Server`] (5xx) and [`LoopError::Connect`] —
/// and only when they happen while opening the stream. Once a stream is open its output may
/// already have reached the caller, so nothing inside it is ever retried.
///
/// The delay before retry *n* (0-based) is `initial_backoff × 2ⁿ`, capped at `max_backoff`;
/// with `jitter` it is drawn uniformly from the upper half of that (so concurrent callers
/// spread out but never retry immediately). A `Retry-After` from the server is a floor: the
/// retry never comes earlier than asked; if the server asks for more than `max_retry_after`,
/// the call is not retried and the [`LoopError::RateLimited`] (with its `retry_after`) is returned.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 disables retries).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Upper bound of the exponential backoff.
    pub max_backoff: Duration,
    /// Longest `Retry-After` that is honoured by waiting; longer ones end the call.
    pub max_retry_after: Duration,
    /// Whether to randomize delays (equal jitter).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 4 attempts, 200 ms initial backoff doubling up to 10 s, `Retry-After` honoured up to
    /// 60 s, with jitter.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `retry` (0-based), before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Whether `error` is of a kind this policy retries (429, 5xx, connection failures).
    pub fn is_retryable(error: &LoopError) -> bool {
        matches!(
            error,
            LoopError::RateLimited { .. } | LoopError::Server { .. } | LoopError::Connect(_)
        )
    }

    /// The delay before retrying after `retries_done` retries failed with `error`, or `None`
    /// when the call must not be retried.
    pub fn delay(&self, retries_done: u32, error: &LoopError) -> Option<Duration> {
        if !Self::is_retryable(error) || retries_done.saturating_add(1) >= self.max_attempts {
            return None;
        }
        let backoff = self.backoff(retries_done);
        let backoff = if self.jitter && !backoff.is_zero() {
            let half = backoff / 2;
            let spread = u64::try_from((backoff - half).as_nanos()).unwrap_or(u64::MAX);
            half + Duration::from_nanos(rand::rng().random_range(0..=spread))
        } else {
            backoff
        };
        match error {
            LoopError::RateLimited {
                retry_after: Some(after),
                ..
            } => (*after <= self.max_retry_after).then(|| backoff.max(*after)),
            _ => Some(backoff),
        }
    }
}

/// The tower [`Policy`] form of a [`RetryPolicy`], counting the attempts of one call. Use it
/// with `tower::retry::RetryLayer::new(ModelRetry::from(policy))` over a service whose error
/// is [`LoopError`]; [`ModelStack`](super::ModelStack) does this for you.
#[derive(Debug, Clone)]
pub struct ModelRetry {
    policy: RetryPolicy,
    retries_done: u32,
}

impl From<RetryPolicy> for ModelRetry {
    fn from(policy: RetryPolicy) -> Self {
        Self {
            policy,
            retries_done: 0,
        }
    }
}

impl Policy<ChatRequest, ChatStream, LoopError> for ModelRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut ChatRequest,
        result: &mut Result<ChatStream, LoopError>,
    ) -> Option<Self::Future> {
        // An open stream is final: its output may already be on its way to the caller.
        let error = result.as_ref().err()?;
        let delay = self.policy.delay(self.retries_done, error)?;
        self.retries_done += 1;
        tracing::warn!(
            model = %request.model,
            retry = self.retries_done,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "retrying model call"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &ChatRequest) -> Option<ChatRequest> {
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> LoopError {
        LoopError::Server {
            status: 503,
            message: String::new(),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            jitter: false,
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = (0..5).map(|n| policy.backoff(n)).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let delay = policy.delay(1, &server()).unwrap();
            assert!(delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400));
        }
    }

    #[test]
    fn only_transient_errors_are_retried_and_attempts_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            jitter: false,
            ..RetryPolicy::default()
        };
        assert!(policy.delay(0, &server()).is_some());
        assert!(
            policy
                .delay(0, &LoopError::Connect("refused".into()))
                .is_some()
        );
        assert!(policy.delay(1, &server()).is_some());
        assert!(
            policy.delay(2, &server()).is_none(),
            "third attempt was the last"
        );
        for error in [
            LoopError::Auth("no".into()),
            LoopError::BadRequest("no".into()),
            LoopError::ModelNotFound("m".into()),
            LoopError::Timeout(Duration::from_secs(1)),
            LoopError::MalformedStream("cut".into()),
        ] {
            assert!(
                policy.delay(0, &error).is_none(),
                "{error:?} must not be retried"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_too_long_ones_are_not_waited_for() {
        let policy = RetryPolicy {
            jitter: false,
            max_retry_after: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let limited = |secs| LoopError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            message: String::new(),
        };
        assert_eq!(policy.delay(0, &limited(3)), Some(Duration::from_secs(3)));
        assert_eq!(
            policy.delay(0, &limited(0)),
            Some(Duration::from_millis(200)),
            "backoff still applies when the server allows an immediate retry"
        );
        assert_eq!(policy.delay(0, &limited(6)), None);
    }
}
