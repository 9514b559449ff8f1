//! A conversation-eval scenario file (TOML, or JSON when it starts with `{`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentrt_conversation_eval::fuzzing::scenario(data));
