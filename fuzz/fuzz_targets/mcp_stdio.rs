//! JSON-RPC frames on the coordination MCP server's stdin.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentrt_coordination_mcp::fuzzing::stdio_frames(data));
