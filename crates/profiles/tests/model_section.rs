//! The model section's tool-call mode and middleware stack settings: read exactly, defaults
//! left out of the canonical form, bad values reported with their field path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_profiles::{AgentProfile, ProfileError, StackSettings, ToolCallMode};

fn profile(model_extra: &str) -> Result<AgentProfile, ProfileError> {
    AgentProfile::from_toml_str(&format!(
        r#"
name = "p"
harness = "router"
[model]
provider = "openai-compatible"
default = "small"
{model_extra}
"#
    ))
}

#[test]
fn tool_call_mode_and_stack_settings_are_read_as_written() {
    let p = profile(
        r#"tool_calls = "structured"
[model.stack]
connect_timeout_ms = 500
first_byte_timeout_ms = 2000
idle_timeout_ms = 3000
max_attempts = 1
max_concurrency = 4
requests_per_minute = 60"#,
    )
    .unwrap();
    assert_eq!(p.model.tool_calls, ToolCallMode::Structured);
    assert_eq!(
        p.model.stack,
        StackSettings {
            connect_timeout_ms: Some(500),
            first_byte_timeout_ms: Some(2000),
            idle_timeout_ms: Some(3000),
            max_attempts: Some(1),
            max_concurrency: Some(4),
            requests_per_minute: Some(60),
        }
    );
}

#[test]
fn spelled_out_defaults_have_the_same_address_as_omitted_ones() {
    let plain = profile("").unwrap();
    let spelled = profile("tool_calls = \"native\"\n[model.stack]").unwrap();
    assert_eq!(plain.content_address(), spelled.content_address());
    assert_eq!(plain.model.tool_calls, ToolCallMode::Native);
    assert_eq!(plain.model.stack, StackSettings::default());
}

#[test]
fn bad_stack_values_name_their_field() {
    let err = profile("tool_calls = \"telepathy\"\n[model.stack]\nmax_attempts = 0\nidle_timeout_ms = \"soon\"\nretries = 3")
        .unwrap_err();
    let ProfileError::Invalid(errors) = err else {
        panic!("expected validation errors, got {err}")
    };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for path in [
        "model.tool_calls",
        "model.stack.max_attempts",
        "model.stack.idle_timeout_ms",
        "model.stack.retries",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    let text = errors.at("model.tool_calls").unwrap().to_string();
    assert!(
        text.contains("native") && text.contains("structured"),
        "{text}"
    );
}

#[test]
fn overrides_replace_only_the_fields_they_set() {
    let base = StackSettings {
        connect_timeout_ms: Some(1),
        max_attempts: Some(5),
        ..StackSettings::default()
    };
    let over = StackSettings {
        max_attempts: Some(1),
        idle_timeout_ms: Some(9),
        ..StackSettings::default()
    };
    let merged = base.overridden_by(over);
    assert_eq!(merged.connect_timeout_ms, Some(1));
    assert_eq!(merged.max_attempts, Some(1));
    assert_eq!(merged.idle_timeout_ms, Some(9));
}
