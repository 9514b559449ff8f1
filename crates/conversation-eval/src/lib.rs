//! Persona-driven conversation evaluation: a simulated user with goals and hidden facts talks to
//! the agent, and a separate judge scores the conversation against a rubric.
//!
//! Nothing is exported yet: `eval_persona` is specified but not built (see the open issues).
#![warn(missing_docs)]
