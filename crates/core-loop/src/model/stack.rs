//! Models as tower services, the layers that wrap them, and [`ModelStack`], which assembles
//! them into a [`ChatModel`] again.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceExt};
use tracing::Instrument;

use agentrt_profiles::ToolCallMode;

use super::meter::UsageMeter;
use super::retry::{ModelRetry, RetryPolicy};
use super::structured::StructuredToolCallsLayer;
use super::types::{ChatModel, ChatRequest, ChatStream, StreamItem};
use crate::LoopError;

/// Any [`ChatModel`] as a `tower::Service<ChatRequest, Response = ChatStream, Error = LoopError>`:
/// the response is the opened stream, so layers act on opening (timeouts, retries) separately
/// from what flows through the stream.
#[derive(Clone)]
pub struct ModelService {
    model: Arc<dyn ChatModel>,
}

impl std::fmt::Debug for ModelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelService")
            .field("provider", &self.model.provider())
            .finish()
    }
}

impl ModelService {
    /// Wraps a model.
    pub fn new(model: impl ChatModel + 'static) -> Self {
        Self::from_arc(Arc::new(model))
    }

    /// Wraps a shared model.
    pub fn from_arc(model: Arc<dyn ChatModel>) -> Self {
        Self { model }
    }
}

impl Service<ChatRequest> for ModelService {
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let model = Arc::clone(&self.model);
        async move { model.stream(request).await }.boxed()
    }
}

/// Ends a stream with [`LoopError::Timeout`] when no item arrives within `idle` of the previous
/// one (or of the opening). The inner stream — and with it the connection — is dropped.
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeoutLayer {
    idle: Duration,
}

impl IdleTimeoutLayer {
    /// A layer allowing at most `idle` between stream items.
    pub fn new(idle: Duration) -> Self {
        Self { idle }
    }
}

impl<S> Layer<S> for IdleTimeoutLayer {
    type Service = IdleTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdleTimeout {
            inner,
            idle: self.idle,
        }
    }
}

/// The service of [`IdleTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
}

impl<S> Service<ChatRequest> for IdleTimeout<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LoopError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let idle = self.idle;
        self.inner
            .call(request)
            .map_ok(move |stream| idle_timeout(stream, idle))
            .boxed()
    }
}

fn idle_timeout(stream: ChatStream, idle: Duration) -> ChatStream {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((Err(LoopError::Timeout(idle)), None)),
        }
    })
    .boxed()
}

/// Limits how many model calls run at once. Unlike `tower::limit::ConcurrencyLimit`, whose
/// permit ends when the response future resolves (here: when the stream opens), the permit is
/// held until the stream is finished or dropped — generation is what occupies the provider.
#[derive(Debug, Clone)]
pub struct StreamConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
}

impl StreamConcurrencyLimitLayer {
    /// At most `max` streams open at once, shared by every service this layer builds.
    pub fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for StreamConcurrencyLimitLayer {
    type Service = StreamConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamConcurrencyLimit {
            inner,
            semaphore: PollSemaphore::new(Arc::clone(&self.semaphore)),
            permit: None,
        }
    }
}

/// The service of [`StreamConcurrencyLimitLayer`].
#[derive(Debug)]
pub struct StreamConcurrencyLimit<S> {
    inner: S,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for StreamConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        // A clone shares the limit but not the permit this instance may hold.
        Self {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S> Service<ChatRequest> for StreamConcurrencyLimit<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LoopError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        if self.permit.is_none() {
            match ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => {
                    return Poll::Ready(Err(LoopError::ModelUnavailable(
                        "concurrency limit closed".into(),
                    )));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let Some(permit) = self.permit.take() else {
            return futures::future::ready(Err(LoopError::ModelUnavailable(
                "called without poll_ready: no concurrency permit".into(),
            )))
            .boxed();
        };
        self.inner
            .call(request)
            .map_ok(move |stream| {
                stream
                    .map(move |item| {
                        let _held = &permit;
                        item
                    })
                    .boxed()
            })
            .boxed()
    }
}

/// Records every call in a [`UsageMeter`]: completed calls with their usage, failures to open,
/// and streams that ended or were dropped without a final response.
#[derive(Debug, Clone)]
pub struct UsageMeterLayer {
    meter: UsageMeter,
}

impl UsageMeterLayer {
    /// A layer recording into `meter`.
    pub fn new(meter: UsageMeter) -> Self {
        Self { meter }
    }
}

impl<S> Layer<S> for UsageMeterLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            meter: self.meter.clone(),
        }
    }
}

/// The service of [`UsageMeterLayer`].
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    meter: UsageMeter,
}

struct MeterGuard {
    meter: UsageMeter,
    model: String,
    finished: bool,
}

impl Drop for MeterGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.meter.record_incomplete();
        }
    }
}

impl<S> Service<ChatRequest> for Metered<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LoopError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let meter = self.meter.clone();
        let model = request.model.clone();
        self.inner
            .call(request)
            .map(move |opened| match opened {
                Err(error) => {
                    meter.record_failed();
                    Err(error)
                }
                Ok(stream) => {
                    let mut guard = MeterGuard {
                        meter,
                        model,
                        finished: false,
                    };
                    Ok(stream
                        .map(move |item| {
                            if let Ok(StreamItem::Done(response)) = &item
                                && !guard.finished
                            {
                                guard.finished = true;
                                guard.meter.record(&guard.model, response);
                            }
                            item
                        })
                        .boxed())
                }
            })
            .boxed()
    }
}

/// Wraps every call in a `chat {model}` span by the OpenTelemetry GenAI conventions (see
/// [`crate::telemetry`]: provider, requested model; at the end the reported model, response id,
/// finish reason and the tokens that were reported; a failure's `error.type`) and logs failures.
/// The span lasts until the stream is finished or dropped.
#[derive(Debug, Clone)]
pub struct ModelTraceLayer {
    provider: Arc<str>,
}

impl ModelTraceLayer {
    /// A layer naming `provider` in its spans.
    pub fn new(provider: impl Into<Arc<str>>) -> Self {
        Self {
            provider: provider.into(),
        }
    }
}

impl<S> Layer<S> for ModelTraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced {
            inner,
            provider: Arc::clone(&self.provider),
        }
    }
}

/// The service of [`ModelTraceLayer`].
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
    provider: Arc<str>,
}

impl<S> Service<ChatRequest> for Traced<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LoopError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let span = crate::telemetry::chat_span(&self.provider, &request);
        let stream_span = span.clone();
        self.inner
            .call(request)
            .instrument(span)
            .map(move |opened| match opened {
                Err(error) => {
                    crate::telemetry::record_model_error(&stream_span, &error);
                    tracing::warn!(parent: &stream_span, error = %error, "model call failed to open");
                    Err(error)
                }
                Ok(stream) => Ok(stream
                    .inspect(move |item| match item {
                        Ok(StreamItem::Done(response)) => {
                            crate::telemetry::record_response(&stream_span, response);
                            tracing::debug!(parent: &stream_span, "model call finished");
                        }
                        Err(error) => {
                            crate::telemetry::record_model_error(&stream_span, error);
                            tracing::warn!(parent: &stream_span, error = %error, "model stream failed");
                        }
                        Ok(StreamItem::Delta(_)) => {}
                    })
                    .boxed()),
            })
            .boxed()
    }
}

/// Converts an error that went through a boxing tower layer back into [`LoopError`].
fn unbox_error(error: BoxError, open_timeout: Option<Duration>) -> LoopError {
    let error = match error.downcast::<LoopError>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    if error.is::<tower::timeout::error::Elapsed>() {
        return LoopError::Timeout(open_timeout.unwrap_or_default());
    }
    LoopError::ModelUnavailable(super::http::error_chain(&*error))
}

type ModelBoxService = BoxCloneService<ChatRequest, ChatStream, LoopError>;
type Worker = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Assembles a middleware stack around a model and yields a [`StackedModel`], which is a
/// [`ChatModel`] again — the loop does not know the difference.
///
/// From the outside in: tracing span → structured tool calls (when asked for) → usage meter → retry (with its backoff sleeps) → rate
/// limit → concurrency limit → open timeout → idle timeout → the model. So every attempt
/// takes a rate-limit slot and a concurrency permit, each attempt has its own open timeout,
/// and the meter and span see one logical call.
///
/// ```
/// use std::time::Duration;
/// use agentrt_core_loop::model::{ModelStack, RetryPolicy, ScriptedModel, ScriptedTurn, UsageMeter};
///
/// let meter = UsageMeter::new();
/// let model = ModelStack::new(ScriptedModel::new([ScriptedTurn::text("hi")]))
///     .timeout(Duration::from_secs(30))
///     .idle_timeout(Duration::from_secs(60))
///     .retry(RetryPolicy { max_attempts: 5, ..RetryPolicy::default() })
///     .concurrency_limit(8)
///     .rate_limit(60, Duration::from_secs(60))
///     .meter(meter.clone())
///     .build();
/// # let _ = model;
/// ```
#[must_use = "a ModelStack does nothing until built"]
pub struct ModelStack {
    model: Arc<dyn ChatModel>,
    open_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    concurrency: Option<usize>,
    rate: Option<(u64, Duration)>,
    meter: Option<UsageMeter>,
    tool_calls: ToolCallMode,
    buffer: usize,
}

impl std::fmt::Debug for ModelStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStack")
            .field("provider", &self.model.provider())
            .field("open_timeout", &self.open_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("rate", &self.rate)
            .field("meter", &self.meter.is_some())
            .field("tool_calls", &self.tool_calls)
            .finish()
    }
}

impl ModelStack {
    /// Starts a stack around `model` (no layer yet besides tracing).
    pub fn new(model: impl ChatModel + 'static) -> Self {
        Self::from_arc(Arc::new(model))
    }

    /// Starts a stack around a shared model.
    pub fn from_arc(model: Arc<dyn ChatModel>) -> Self {
        Self {
            model,
            open_timeout: None,
            idle_timeout: None,
            retry: None,
            concurrency: None,
            rate: None,
            meter: None,
            tool_calls: ToolCallMode::Native,
            buffer: 1024,
        }
    }

    /// Each attempt must open its stream (status and headers received) within `timeout`, else
    /// it fails with [`LoopError::Timeout`] (not retried).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = Some(timeout);
        self
    }

    /// At most `idle` may pass between stream items, else the stream ends with
    /// [`LoopError::Timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Retries failures to open the stream as `policy` says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// At most `max` streams open at once (0 is treated as 1).
    pub fn concurrency_limit(mut self, max: usize) -> Self {
        self.concurrency = Some(max.max(1));
        self
    }

    /// At most `calls` attempts started per `per` (tower's `RateLimit` behind a `Buffer`, so
    /// clones of the built model share it). `calls` of 0 is treated as 1.
    pub fn rate_limit(mut self, calls: u64, per: Duration) -> Self {
        self.rate = Some((calls.max(1), per));
        self
    }

    /// How many calls may wait for the rate limiter at once before callers queue (default
    /// 1024).
    pub fn buffer(mut self, capacity: usize) -> Self {
        self.buffer = capacity.max(1);
        self
    }

    /// Records usage into `meter`.
    pub fn meter(mut self, meter: UsageMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// How the model is asked for tool calls (default [`ToolCallMode::Native`]: the provider's
    /// own API). [`ToolCallMode::Structured`] adds the [`StructuredToolCallsLayer`]: requests
    /// that offer tools ask for a JSON reply instead, mapped back to text or tool calls.
    pub fn tool_calls(mut self, mode: ToolCallMode) -> Self {
        self.tool_calls = mode;
        self
    }

    /// Builds the stack. Does not need a Tokio runtime: the layers are assembled on the first
    /// call (tower's rate limiter and its buffer worker need the runtime that call runs on).
    pub fn build(self) -> StackedModel {
        StackedModel {
            inner: Arc::new(StackInner {
                provider: Arc::from(self.model.provider()),
                state: Mutex::new(StackState::Pending(Box::new(self))),
            }),
        }
    }

    /// Assembles the layers; must run inside a Tokio runtime when a rate limit is set.
    fn assemble(self, provider: Arc<str>) -> (ModelBoxService, Option<Worker>) {
        let mut service: ModelBoxService = BoxCloneService::new(ModelService::from_arc(self.model));
        if let Some(idle) = self.idle_timeout {
            service = BoxCloneService::new(IdleTimeoutLayer::new(idle).layer(service));
        }
        if let Some(timeout) = self.open_timeout {
            service = BoxCloneService::new(
                tower::timeout::Timeout::new(service, timeout)
                    .map_err(move |e| unbox_error(e, Some(timeout))),
            );
        }
        if let Some(max) = self.concurrency {
            service = BoxCloneService::new(StreamConcurrencyLimitLayer::new(max).layer(service));
        }
        let mut worker: Option<Worker> = None;
        if let Some((calls, per)) = self.rate {
            let limited =
                tower::limit::RateLimit::new(service, tower::limit::rate::Rate::new(calls, per));
            let (buffer, buffer_worker) = tower::buffer::Buffer::pair(limited, self.buffer);
            worker = Some(Box::pin(buffer_worker));
            service = BoxCloneService::new(buffer.map_err(|e| unbox_error(e, None)));
        }
        if let Some(policy) = self.retry {
            service = BoxCloneService::new(
                tower::retry::RetryLayer::new(ModelRetry::from(policy)).layer(service),
            );
        }
        if let Some(meter) = self.meter {
            service = BoxCloneService::new(UsageMeterLayer::new(meter).layer(service));
        }
        if self.tool_calls == ToolCallMode::Structured {
            service = BoxCloneService::new(StructuredToolCallsLayer::new().layer(service));
        }
        service = BoxCloneService::new(ModelTraceLayer::new(provider).layer(service));
        (service, worker)
    }
}

/// A model wrapped in middleware by [`ModelStack`]; a [`ChatModel`] whose
/// [`provider`](ChatModel::provider) is the wrapped model's. Clones share the limits, the
/// meter and the rate limiter.
#[derive(Clone)]
pub struct StackedModel {
    inner: Arc<StackInner>,
}

struct StackInner {
    provider: Arc<str>,
    state: Mutex<StackState>,
}

enum StackState {
    Pending(Box<ModelStack>),
    Built(ModelBoxService),
    /// Only while assembling (never observable: assembly happens under the lock).
    Assembling,
}

impl std::fmt::Debug for StackedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackedModel")
            .field("provider", &self.inner.provider)
            .finish_non_exhaustive()
    }
}

impl StackedModel {
    /// The stack as a tower service (a clone sharing limits, meter and rate limiter), for
    /// composing further layers. Fails with [`LoopError::ModelUnavailable`] outside a Tokio
    /// runtime.
    pub fn service(
        &self,
    ) -> Result<BoxCloneService<ChatRequest, ChatStream, LoopError>, LoopError> {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let StackState::Built(service) = &*state {
            return Ok(service.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            LoopError::ModelUnavailable(
                "a model stack must be called inside a Tokio runtime".into(),
            )
        })?;
        let StackState::Pending(stack) = std::mem::replace(&mut *state, StackState::Assembling)
        else {
            return Err(LoopError::ModelUnavailable(
                "the model stack failed while being assembled".into(),
            ));
        };
        let (service, worker) = stack.assemble(Arc::clone(&self.inner.provider));
        if let Some(worker) = worker {
            runtime.spawn(worker);
        }
        *state = StackState::Built(service.clone());
        Ok(service)
    }
}

#[async_trait::async_trait]
impl ChatModel for StackedModel {
    fn provider(&self) -> &str {
        &self.inner.provider
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        self.service()?.oneshot(request).await
    }
}
