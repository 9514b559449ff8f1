//! agentrt: an exact, measurable, durable agent runtime.
//!
//! This facade re-exports each layer as a module, bottom layer first. See `docs/architecture.md`
//! for the code map and the invariants that hold across them.
//!
//! # Features
//!
//! - `sqlite` (default): session stores in a SQLite file (`session_store::SqliteStore`).
//! - `postgres` (default): session stores on a Postgres server (`session_store::PostgresStore`).
//! - `otel` (default): [`otel`], the export of the GenAI spans the crates emit over OTLP/HTTP
//!   (`tracing-opentelemetry` and `opentelemetry-otlp`), configured from the standard
//!   `OTEL_EXPORTER_OTLP_*` variables; `agentrt --otlp` turns it on.
//!
//! Both are on by default, so the `agentrt` command opens either kind of `--store`. A library user
//! who needs one picks it: `agentrt = { default-features = false, features = ["sqlite"] }`. The
//! crates below the facade take the store without a database of their own, so the facade's choice
//! is the whole build's.
#![warn(missing_docs)]

pub use agentrt_conversation_eval as conversation_eval;
pub use agentrt_coordination_mcp as coordination_mcp;
pub use agentrt_core_loop as core_loop;
pub use agentrt_improvement as improvement;
pub use agentrt_profiles as profiles;
pub use agentrt_sandbox_lineage as sandbox_lineage;
pub use agentrt_session_store as session_store;

#[cfg(feature = "otel")]
pub mod otel;
