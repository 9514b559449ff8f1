//! An Anthropic Messages streaming body, cut at arbitrary points.
#![no_main]

use agentrt_core_loop::fuzzing::{Provider, model_stream};

libfuzzer_sys::fuzz_target!(|data: &[u8]| model_stream(Provider::Anthropic, data));
