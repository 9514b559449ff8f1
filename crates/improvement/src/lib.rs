//! Measured self-improvement of agent profiles: candidate generation, train / selection / test
//! partitions and a promotion gate that only ships what wins on held-out work.
//!
//! Nothing is exported yet: the `improve` verb is specified but not built (see the open issues).
#![warn(missing_docs)]
