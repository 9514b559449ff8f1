//! A supervision journal's records read back and resumed by a durable supervisor.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentrt_coordination_mcp::fuzzing::journal_records(data)
});
