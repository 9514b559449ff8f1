//! agentrt: an exact, measurable, durable agent runtime.
//!
//! This facade re-exports each layer as a module, bottom layer first. See `docs/architecture.md`
//! for the code map and the invariants that hold across them.
#![warn(missing_docs)]

pub use agentrt_conversation_eval as conversation_eval;
pub use agentrt_coordination_mcp as coordination_mcp;
pub use agentrt_core_loop as core_loop;
pub use agentrt_improvement as improvement;
pub use agentrt_profiles as profiles;
pub use agentrt_sandbox_lineage as sandbox_lineage;
pub use agentrt_session_store as session_store;
