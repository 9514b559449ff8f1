//! A stored session's events read back and resumed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentrt_core_loop::fuzzing::stored_session(data));
