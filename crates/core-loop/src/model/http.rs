//! HTTP plumbing shared by the providers: sending a request, mapping HTTP failures to typed
//! errors, `Retry-After` parsing, and turning a response body into SSE events.

use std::time::{Duration, Instant, SystemTime};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::LoopError;

/// Longest error body we read from a failed response (the message is kept, not megabytes).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// SSE events of a response body, with transport and parse errors already typed.
pub(crate) type EventStream = BoxStream<'static, Result<Event, LoopError>>;

/// A credential whose `Debug` output is redacted.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Parses user-supplied header pairs once, at build time, so a bad header is a configuration
/// error rather than a failure of every call.
pub(crate) fn parse_headers(pairs: &[(String, String)]) -> Result<HeaderMap, LoopError> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
            LoopError::InvalidModelConfig(format!("header name {name:?} is not valid: {e}"))
        })?;
        let mut header_value = HeaderValue::from_str(value).map_err(|e| {
            LoopError::InvalidModelConfig(format!("value of header {name:?} is not valid: {e}"))
        })?;
        // Credentials never show up in Debug output or logs.
        if matches!(
            header_name.as_str(),
            "authorization" | "x-api-key" | "api-key" | "proxy-authorization"
        ) {
            header_value.set_sensitive(true);
        }
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Sends `request` and returns the response once its status and headers arrived; non-success
/// statuses become typed errors (the body is read for the server's message).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    model: &str,
) -> Result<reqwest::Response, LoopError> {
    let started = Instant::now();
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(&e, started))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_after(response.headers(), SystemTime::now());
    let body = read_error_body(response).await;
    Err(status_error(status.as_u16(), &body, retry_after, model))
}

/// Maps a reqwest failure that happened before any response to a typed error.
pub(crate) fn transport_error(error: &reqwest::Error, started: Instant) -> LoopError {
    if error.is_timeout() {
        LoopError::Timeout(started.elapsed())
    } else if error.is_builder() {
        LoopError::InvalidModelConfig(error_chain(error))
    } else {
        // Connect failures, resets and closes before the response head all mean the request
        // may not have been processed: retryable as a connection error.
        LoopError::Connect(error_chain(error))
    }
}

/// The error and its sources in one line (reqwest's top-level message alone is vague).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn read_error_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&body).into_owned()
}

/// The server's own message from an error body: `error.message` (OpenAI and Anthropic shapes),
/// a top-level `message` or string `error`, else the trimmed body text.
pub(crate) fn server_message(body: &str) -> String {
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(body) {
        let found = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .or_else(|| value.get("error").filter(|e| e.is_string()))
            .and_then(serde_json::Value::as_str);
        if let Some(message) = found {
            return message.to_owned();
        }
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        "(empty response body)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Maps a non-success HTTP status to the typed error the middleware and callers act on.
pub(crate) fn status_error(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    model: &str,
) -> LoopError {
    let message = server_message(body);
    match status {
        401 | 403 => LoopError::Auth(format!("HTTP {status}: {message}")),
        404 => LoopError::ModelNotFound(format!("{model} (HTTP 404: {message})")),
        429 => LoopError::RateLimited {
            retry_after,
            message,
        },
        500..=599 => LoopError::Server { status, message },
        _ => LoopError::BadRequest(format!("HTTP {status}: {message}")),
    }
}

/// `Retry-After` as a delay: either delta-seconds or an HTTP-date (relative to `now`; a date in
/// the past means "now"). Unparseable values are ignored.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The SSE events of a streaming response. A transport failure inside the body (connection cut,
/// read timeout) or bytes that are not SSE become an `Err` item.
pub(crate) fn sse_events(response: reqwest::Response) -> EventStream {
    sse_events_of(response.bytes_stream())
}

/// The SSE events of a body given as a stream of byte chunks, cut wherever the transport cut it.
pub(crate) fn sse_events_of<S>(body: S) -> EventStream
where
    S: futures::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
{
    body.eventsource()
        .map(|item| {
            item.map_err(|e| match e {
                EventStreamError::Transport(e) if e.is_timeout() => LoopError::MalformedStream(
                    format!("read timed out mid-stream: {}", error_chain(&e)),
                ),
                EventStreamError::Transport(e) => LoopError::MalformedStream(format!(
                    "connection lost mid-stream: {}",
                    error_chain(&e)
                )),
                EventStreamError::Utf8(e) => {
                    LoopError::MalformedStream(format!("stream is not UTF-8: {e}"))
                }
                EventStreamError::Parser(e) => {
                    LoopError::MalformedStream(format!("stream is not server-sent events: {e}"))
                }
            })
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            retry_after(&headers("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers("1.5"), now),
            Some(Duration::from_millis(1500))
        );
        // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT.
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:30 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date in the past means retry now"
        );
        assert_eq!(retry_after(&headers("soon"), now), None);
        assert_eq!(retry_after(&headers("-3"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn server_message_prefers_the_structured_message() {
        assert_eq!(
            server_message(r#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(server_message(r#"{"error":"plain"}"#), "plain");
        assert_eq!(server_message("  oops \n"), "oops");
        assert_eq!(server_message(""), "(empty response body)");
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        assert!(matches!(
            status_error(401, "", None, "m"),
            LoopError::Auth(_)
        ));
        assert!(matches!(
            status_error(403, "", None, "m"),
            LoopError::Auth(_)
        ));
        assert!(matches!(
            status_error(404, "", None, "m"),
            LoopError::ModelNotFound(m) if m.starts_with("m ")
        ));
        assert!(matches!(
            status_error(400, r#"{"error":{"message":"too long"}}"#, None, "m"),
            LoopError::BadRequest(m) if m.contains("too long")
        ));
        assert!(matches!(
            status_error(429, "slow down", Some(Duration::from_secs(2)), "m"),
            LoopError::RateLimited { retry_after: Some(d), message } if d == Duration::from_secs(2) && message == "slow down"
        ));
        assert!(matches!(
            status_error(529, "overloaded", None, "m"),
            LoopError::Server { status: 529, .. }
        ));
    }
}
