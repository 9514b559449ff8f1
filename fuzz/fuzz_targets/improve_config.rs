//! An `agentrt improve` configuration file, resolved against the product eval example.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentrt_improvement::fuzzing::improve_config(data));
