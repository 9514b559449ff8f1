//! The tower middleware stack: retries that recover (and the ones that must not happen),
//! timeouts, limits and usage accounting — against the fault server and the scripted model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use agentrt_core_loop::LoopError;
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, Message, ModelPrice, ModelStack, OpenAiCompatible, PriceTable,
    RetryPolicy, ScriptedModel, ScriptedTurn, StreamItem, Usage, UsageMeter,
};
use futures::StreamExt;
use serde_json::json;
use support::{End, FaultServer, Reply, Step, openai};

fn request() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![Message::User {
            content: "hi".into(),
        }],
        tools: vec![],
        temperature: None,
        max_tokens: None,
        response_format: None,
    }
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(5),
        jitter: true,
    }
}

fn http(server: &FaultServer) -> OpenAiCompatible {
    OpenAiCompatible::builder(server.base_url())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_no_earlier_than_asked() {
    let server = FaultServer::start([
        Reply::rate_limited("1"),
        Reply::sse(openai::text("m", &["recovered"], Some((5, 1)))),
    ])
    .await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(3)).build();
    let started = Instant::now();
    let response = model.complete(request()).await.unwrap();
    assert_eq!(response.content.as_deref(), Some("recovered"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured (waited {:?})",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_500_then_success_recovers() {
    let server = FaultServer::start([
        Reply::error(500, "boom"),
        Reply::error(502, "bad gateway"),
        Reply::sse(openai::text("m", &["ok"], Some((5, 1)))),
    ])
    .await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(3)).build();
    let response = model.complete(request()).await.unwrap();
    assert_eq!(response.content.as_deref(), Some("ok"));
    assert_eq!(server.requests().len(), 3);
    assert_eq!(model.provider(), "openai-compatible");
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_error_is_returned() {
    let server = FaultServer::start([
        Reply::error(503, "one"),
        Reply::error(503, "two"),
        Reply::error(503, "three"),
        Reply::sse(openai::text("m", &["never reached"], None)),
    ])
    .await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(3)).build();
    let error = model.complete(request()).await.unwrap_err();
    assert!(matches!(error, LoopError::Server { status: 503, ref message } if message == "three"));
    assert_eq!(
        server.requests().len(),
        3,
        "max_attempts counts the first try"
    );
    assert_eq!(server.replies_left(), 1);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_is_returned_not_waited_for() {
    let server = FaultServer::start([Reply::rate_limited("3600")]).await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(5)).build();
    let error = model.complete(request()).await.unwrap_err();
    assert!(
        matches!(error, LoopError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3600))
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn non_transient_errors_are_not_retried() {
    let server = FaultServer::start([
        Reply::error(401, "bad key"),
        Reply::error(400, "bad request"),
    ])
    .await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(5)).build();
    assert!(matches!(
        model.complete(request()).await.unwrap_err(),
        LoopError::Auth(_)
    ));
    assert!(matches!(
        model.complete(request()).await.unwrap_err(),
        LoopError::BadRequest(_)
    ));
    assert_eq!(server.requests().len(), 2, "one request per call");
}

#[tokio::test]
async fn connect_errors_are_retried() {
    let server =
        FaultServer::start([Reply::Close, Reply::sse(openai::text("m", &["ok"], None))]).await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(3)).build();
    let response = model.complete(request()).await.unwrap();
    assert_eq!(response.content.as_deref(), Some("ok"));
}

#[tokio::test]
async fn errors_after_output_reached_the_caller_are_never_retried() {
    let scripted = ScriptedModel::new([
        ScriptedTurn::text("one two three").fail_mid_stream(
            1,
            LoopError::Server {
                status: 500,
                message: "died mid-answer".into(),
            },
        ),
        ScriptedTurn::text("a second answer the caller must not see"),
    ]);
    let model = ModelStack::new(scripted.clone())
        .retry(fast_retry(5))
        .build();
    let items: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    assert_eq!(items.len(), 2);
    assert!(matches!(items[0], Ok(StreamItem::Delta(_))));
    assert!(matches!(
        items[1],
        Err(LoopError::Server { status: 500, .. })
    ));
    assert_eq!(scripted.calls(), 1);

    let server = FaultServer::start([
        Reply::sse_cut([openai::chunk("m", json!({"content": "par"}), None)]),
        Reply::sse(openai::text("m", &["must not be requested"], None)),
    ])
    .await;
    let model = ModelStack::new(http(&server)).retry(fast_retry(5)).build();
    let error = model.complete(request()).await.unwrap_err();
    assert!(matches!(error, LoopError::MalformedStream(_)), "{error:?}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_hanging_server_hits_the_open_timeout() {
    let server = FaultServer::start([Reply::Hang, Reply::Hang]).await;
    let model = ModelStack::new(http(&server))
        .timeout(Duration::from_millis(300))
        .retry(fast_retry(3))
        .build();
    let started = Instant::now();
    let error = model.complete(request()).await.unwrap_err();
    assert!(
        matches!(error, LoopError::Timeout(d) if d == Duration::from_millis(300)),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(server.requests().len(), 1, "timeouts are not retried");
}

#[tokio::test]
async fn a_stalled_stream_hits_the_idle_timeout_and_the_connection_is_dropped() {
    let server = FaultServer::start([Reply::Stream {
        steps: vec![
            Step::Chunk(openai::chunk("m", json!({"content": "first"}), None)),
            Step::Sleep(Duration::from_secs(60)),
            Step::Chunk(openai::chunk("m", json!({}), Some("stop"))),
        ],
        end: End::Complete,
    }])
    .await;
    let model = ModelStack::new(http(&server))
        .idle_timeout(Duration::from_millis(300))
        .build();
    let items: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(items[0], Ok(StreamItem::Delta(_))));
    assert!(matches!(items[1], Err(LoopError::Timeout(d)) if d == Duration::from_millis(300)));
    assert!(
        server
            .wait_for_disconnects(1, Duration::from_secs(20))
            .await
    );
}

#[tokio::test]
async fn the_concurrency_limit_holds_until_the_stream_is_dropped() {
    let scripted = ScriptedModel::from_fn(|_| ScriptedTurn::text("a b c"));
    let model = ModelStack::new(scripted.clone())
        .concurrency_limit(1)
        .build();
    let first = model.stream(request()).await.unwrap();
    let blocked = tokio::time::timeout(Duration::from_millis(200), model.stream(request())).await;
    assert!(blocked.is_err(), "a second stream must wait for the first");
    assert_eq!(scripted.calls(), 1);
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), model.stream(request()))
        .await
        .expect("the permit is released when the stream is dropped")
        .unwrap();
    let items: Vec<_> = second.collect().await;
    assert!(matches!(items.last(), Some(Ok(StreamItem::Done(_)))));
    assert_eq!(scripted.calls(), 2);
}

#[tokio::test]
async fn the_rate_limit_spaces_calls_across_clones() {
    let scripted = ScriptedModel::from_fn(|_| ScriptedTurn::text("ok"));
    let model = ModelStack::new(scripted.clone())
        .rate_limit(1, Duration::from_millis(250))
        .build();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let model = model.clone();
        tasks.push(tokio::spawn(async move { model.complete(request()).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "3 calls at 1 per 250 ms need at least 500 ms, took {:?}",
        started.elapsed()
    );
    assert_eq!(scripted.calls(), 3);
}

#[tokio::test]
async fn the_meter_sums_known_usage_and_counts_unknowns_separately() {
    let prices = PriceTable::new()
        .with(
            "m",
            ModelPrice {
                input: 1.0,
                output: 2.0,
                cached_input: None,
            },
        )
        .unwrap();
    let meter = UsageMeter::with_prices(prices);
    let scripted = ScriptedModel::new([
        ScriptedTurn::text("a").with_usage(1_000, 500),
        ScriptedTurn::text("b").with_usage_detail(Usage {
            input_tokens: Some(10),
            output_tokens: None,
            cached_tokens: Some(4),
        }),
        ScriptedTurn::fail(LoopError::Auth("no".into())),
        ScriptedTurn::text("c d e").with_usage(1, 1),
        ScriptedTurn::text("f").with_usage(3, 4),
    ]);
    let model = ModelStack::new(scripted).meter(meter.clone()).build();
    model.complete(request()).await.unwrap();
    model.complete(request()).await.unwrap();
    model.complete(request()).await.unwrap_err();
    let mut dropped = model.stream(request()).await.unwrap();
    dropped.next().await.unwrap().unwrap();
    drop(dropped);
    model.complete(request()).await.unwrap();

    let totals = meter.totals();
    assert_eq!(totals.calls, 3);
    assert_eq!(totals.failed_calls, 1);
    assert_eq!(
        totals.incomplete_calls, 1,
        "a dropped stream may have used unreported tokens"
    );
    assert_eq!(totals.input_tokens, 1_013);
    assert_eq!(
        totals.output_tokens, 504,
        "the unknown output is not added as 0..."
    );
    assert_eq!(
        totals.calls_with_unknown_output, 1,
        "...it is counted apart"
    );
    assert_eq!(totals.calls_with_unknown_input, 0);
    assert_eq!(totals.cached_tokens, 4);
    assert_eq!(totals.calls_with_unknown_cached, 2);
    assert_eq!(totals.calls_with_unknown_cost, 1);
    let expected = (1_000.0 + 1_000.0 + 3.0 + 8.0) / 1_000_000.0;
    assert!(
        (totals.dollars - expected).abs() < 1e-12,
        "{}",
        totals.dollars
    );
    assert!(!totals.tokens_exact());
}

#[tokio::test]
async fn the_full_stack_recovers_and_meters_one_logical_call() {
    let server = FaultServer::start([
        Reply::rate_limited("0"),
        Reply::error(500, "flaky"),
        Reply::sse(openai::tool_call("m", "c1", "add", &["{\"a\":", "1}"])),
    ])
    .await;
    let meter = UsageMeter::new();
    let model = ModelStack::new(http(&server))
        .timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(10))
        .retry(fast_retry(4))
        .concurrency_limit(2)
        .rate_limit(100, Duration::from_secs(1))
        .meter(meter.clone())
        .build();
    let response = model.complete(request()).await.unwrap();
    assert_eq!(response.tool_calls[0].arguments, "{\"a\":1}");
    let totals = meter.totals();
    assert_eq!((totals.calls, totals.failed_calls), (1, 0));
    assert_eq!(totals.input_tokens, 20);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_stack_builds_outside_a_runtime_and_says_so_instead_of_panicking_when_used_there() {
    let model = ModelStack::new(ScriptedModel::new([ScriptedTurn::text("ok")]))
        .rate_limit(10, Duration::from_secs(1))
        .build();
    assert!(matches!(
        model.service(),
        Err(LoopError::ModelUnavailable(_))
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(model.complete(request())).unwrap();
    assert_eq!(response.content.as_deref(), Some("ok"));
}
