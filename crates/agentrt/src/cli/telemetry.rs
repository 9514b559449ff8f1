//! `--otlp`: the GenAI spans of whatever the command runs, exported over OTLP/HTTP.

use anyhow::Result;

/// The export started for this command, if any; [`finish`] flushes it.
#[cfg(feature = "otel")]
pub(super) type Telemetry = Option<agentrt::otel::OtelPipeline>;
#[cfg(not(feature = "otel"))]
pub(super) struct Telemetry;

/// Starts the export when `--otlp` or the environment (`OTEL_EXPORTER_OTLP_ENDPOINT` /
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) asks for it; message contents only with
/// `--otlp-content` or `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.
#[cfg(feature = "otel")]
pub(super) fn start(otlp: bool, content: bool) -> Result<Telemetry> {
    use agentrt::otel::{OtelPipeline, content_capture_requested_by_env, otlp_requested_by_env};
    if !otlp && !otlp_requested_by_env() {
        return Ok(None);
    }
    agentrt::core_loop::telemetry::set_capture_message_content(
        content || content_capture_requested_by_env(),
    );
    let pipeline = OtelPipeline::from_env()?;
    pipeline.install()?;
    Ok(Some(pipeline))
}

/// Without the `otel` feature `--otlp` is refused; the environment alone is ignored.
#[cfg(not(feature = "otel"))]
pub(super) fn start(otlp: bool, content: bool) -> Result<Telemetry> {
    if otlp || content {
        anyhow::bail!("--otlp: this agentrt was built without the `otel` feature");
    }
    Ok(Telemetry)
}

/// Exports what is still queued. A failure to export is a warning: the command's own outcome
/// (already recorded in the store) stands.
#[cfg(feature = "otel")]
pub(super) fn finish(telemetry: Telemetry) {
    if let Some(pipeline) = telemetry
        && let Err(error) = pipeline.shutdown()
    {
        eprintln!("warning: {error}");
    }
}

/// Nothing to export without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub(super) fn finish(_telemetry: Telemetry) {}
