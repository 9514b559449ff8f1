//! OpenTelemetry export of the spans the agentrt crates emit (the `otel` feature).
//!
//! The crates below the facade only emit `tracing` spans, named and attributed by the
//! OpenTelemetry GenAI semantic conventions (see `agentrt::core_loop::telemetry`): a run is an
//! `invoke_agent {agent}` span, each model call a `chat {model}` client span, each tool call an
//! `execute_tool {tool}` span, each supervised spawn a `spawn_agent {target}` span. An
//! [`OtelPipeline`] turns them into OpenTelemetry spans through `tracing-opentelemetry` and
//! exports them: over OTLP/HTTP (protobuf) configured from the standard environment variables
//! ([`OtelPipeline::from_env`]), or to any exporter (an in-memory one in tests).
//!
//! ```no_run
//! # fn main() -> Result<(), agentrt::otel::OtelError> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:6006 (or _TRACES_ENDPOINT, _HEADERS, ...)
//! let pipeline = agentrt::otel::OtelPipeline::from_env()?;
//! pipeline.install()?;
//! // ... run agents ...
//! pipeline.shutdown()?; // exports what is still queued
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The name spans are exported under when `OTEL_SERVICE_NAME` does not say otherwise.
const SERVICE_NAME: &str = "agentrt";

/// What can go wrong setting up or shutting down the export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The OTLP exporter could not be built from the environment.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// Another global `tracing` subscriber is already installed.
    #[error("cannot install the OpenTelemetry layer: {0}")]
    Install(String),
    /// Spans still queued could not be exported at shutdown.
    #[error("cannot flush the spans at shutdown: {0}")]
    Shutdown(String),
}

/// Whether the environment asks for OTLP export: `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and `OTEL_SDK_DISABLED` is not `true`.
pub fn otlp_requested_by_env() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether the environment opts in to message contents on spans
/// (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`, the variable the OpenTelemetry
/// GenAI instrumentations read).
pub fn content_capture_requested_by_env() -> bool {
    std::env::var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A tracer provider exporting the agentrt spans, and the `tracing` layer that feeds it.
/// Call [`OtelPipeline::shutdown`] before the process exits, or queued spans are lost.
#[derive(Debug)]
pub struct OtelPipeline {
    provider: SdkTracerProvider,
}

impl OtelPipeline {
    /// Exports over OTLP/HTTP with protobuf, in batches, configured by the standard variables:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (to which `/v1/traces` is appended) or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is; default `http://localhost:4318`),
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`; the resource from
    /// `OTEL_SERVICE_NAME` (default `agentrt`) and `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn from_env() -> Result<Self, OtelError> {
        // The blocking HTTP client must not be created or dropped on an async runtime's thread.
        let built = std::thread::spawn(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map(|exporter| {
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource())
                        .build()
                })
                .map_err(|e| OtelError::Exporter(e.to_string()))
        })
        .join()
        .map_err(|_| OtelError::Exporter("the exporter's setup panicked".into()))??;
        Ok(Self { provider: built })
    }

    /// Exports every span to `exporter` as it ends (no batching): for tests, e.g. with
    /// `opentelemetry_sdk`'s in-memory exporter.
    pub fn with_exporter(exporter: impl SpanExporter + 'static) -> Self {
        Self {
            provider: SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(resource())
                .build(),
        }
    }

    /// The `tracing` layer that turns agentrt's spans (targets starting with `agentrt`, level
    /// info and above) into OpenTelemetry spans of this pipeline. Spans of other crates (the
    /// HTTP client's own, for instance) are not exported.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let filter =
            tracing_subscriber::filter::Targets::new().with_target("agentrt", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SERVICE_NAME))
            // Busy/idle time and thread ids are not GenAI attributes, and tracking them costs
            // work on every poll of an instrumented future.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(filter)
    }

    /// Installs [`OtelPipeline::layer`] as the process's global `tracing` subscriber.
    pub fn install(&self) -> Result<(), OtelError> {
        let subscriber = tracing_subscriber::registry().with(self.layer());
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|e| OtelError::Install(e.to_string()))
    }

    /// Exports what is still queued and stops the exporter.
    pub fn shutdown(self) -> Result<(), OtelError> {
        let provider = self.provider;
        std::thread::spawn(move || provider.shutdown())
            .join()
            .map_err(|_| OtelError::Shutdown("the exporter's shutdown panicked".into()))?
            .map_err(|e| OtelError::Shutdown(e.to_string()))
    }
}

fn resource() -> Resource {
    let builder = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name(SERVICE_NAME).build()
    }
}
