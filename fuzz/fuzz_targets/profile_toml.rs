//! A profile file in TOML.
#![no_main]

use agentrt_profiles::Format;

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentrt_profiles::fuzzing::profile(Format::Toml, data));
