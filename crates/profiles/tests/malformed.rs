//! Malformed profiles: each problem gives one clear error naming its path, the bad value and
//! what was expected; several problems are all reported together.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_profiles::{
    AgentProfile, FieldError, FieldErrorKind, Format, ProfileError, ValidationErrors,
};
use serde_json::json;

const VALID: &str = r#"
name = "worker"
harness = "router"

[model]
provider = "openai"
default = "a"
allowed = ["a", "b"]
"#;

fn invalid_toml(text: &str) -> ValidationErrors {
    match AgentProfile::from_toml_str(text) {
        Err(ProfileError::Invalid(errors)) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

fn invalid_json(text: &str) -> ValidationErrors {
    match AgentProfile::from_json_str(text) {
        Err(ProfileError::Invalid(errors)) => errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

/// Exactly one error, which is returned.
fn single(errors: &ValidationErrors) -> &FieldError {
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got:\n{errors}"
    );
    &errors.as_slice()[0]
}

fn paths(errors: &ValidationErrors) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn the_valid_base_profile_loads() {
    AgentProfile::from_toml_str(VALID).unwrap();
}

#[test]
fn wrong_type_names_path_value_and_expected_type() {
    let errors = invalid_toml(&format!("{VALID}\n[budget]\ntokens = \"lots\"\n"));
    let e = single(&errors);
    assert_eq!(e.path, "budget.tokens");
    assert_eq!(e.kind, FieldErrorKind::WrongType);
    assert_eq!(e.value, Some(json!("lots")));
    assert_eq!(
        e.to_string(),
        r#"budget.tokens: got "lots", expected an integer from 1 to 9223372036854775807"#
    );
}

#[test]
fn unknown_field_is_an_error_listing_the_known_fields() {
    let text = VALID.replace("provider =", "tempreature = 0.2\nprovider =");
    let e = single(&invalid_toml(&text)).clone();
    assert_eq!(e.path, "model.tempreature");
    assert_eq!(e.kind, FieldErrorKind::UnknownField);
    assert_eq!(e.value, Some(json!(0.2)));
    assert!(e.expected.contains("temperature"), "{e}");
    assert!(
        e.to_string()
            .starts_with("model.tempreature: unknown field, expected one of"),
        "{e}"
    );
}

#[test]
fn unknown_top_level_field_is_an_error() {
    let e = single(&invalid_toml(&format!("colour = \"blue\"\n{VALID}"))).clone();
    assert_eq!(
        (e.path.as_str(), e.kind),
        ("colour", FieldErrorKind::UnknownField)
    );
}

#[test]
fn model_outside_allowed_set_names_model_and_set() {
    let e = single(&invalid_toml(
        &VALID.replace("default = \"a\"", "default = \"gpt-5\""),
    ))
    .clone();
    assert_eq!(e.path, "model.default");
    assert_eq!(e.kind, FieldErrorKind::InvalidValue);
    assert_eq!(
        e.to_string(),
        r#"model.default: got "gpt-5", expected one of model.allowed ["a","b"]"#
    );
}

#[test]
fn missing_name_is_reported_as_missing() {
    let e = single(&invalid_toml(&VALID.replace("name = \"worker\"", ""))).clone();
    assert_eq!(e.path, "name");
    assert_eq!(e.kind, FieldErrorKind::Missing);
    assert_eq!(e.value, None);
    assert!(
        e.to_string().starts_with("name: missing, expected `name`"),
        "{e}"
    );
}

#[test]
fn empty_or_malformed_name_is_invalid() {
    for bad in ["", " ", "-leading-dash", "has space", &"x".repeat(65)] {
        let text = VALID.replace("name = \"worker\"", &format!("name = {}", json!(bad)));
        let e = single(&invalid_toml(&text)).clone();
        assert_eq!(
            (e.path.as_str(), e.kind),
            ("name", FieldErrorKind::InvalidValue)
        );
        assert_eq!(e.value, Some(json!(bad)));
    }
}

#[test]
fn a_profile_with_several_problems_reports_every_one() {
    let text = r#"
        harness = "router"
        colour = "blue"

        [model]
        provider = "openai"
        default = "gpt-5"
        allowed = ["a", "b"]
        temperature = 3.5

        [budget]
        tokens = "lots"
        dollars = -1.0
        turns = 0

        [[tools]]
        name = "shell"
        [[tools]]
        name = "shell"

        [[mcp_servers]]
        name = "nowhere"
    "#;
    let errors = invalid_toml(text);
    assert_eq!(
        paths(&errors),
        [
            "name",
            "colour",
            "model.temperature",
            "model.default",
            "tools[1].name",
            "mcp_servers[0].command",
            "budget.tokens",
            "budget.dollars",
            "budget.turns",
        ],
        "{errors}"
    );
    // One line per problem in the error's display, after a count.
    let shown = ProfileError::Invalid(errors.clone()).to_string();
    assert!(
        shown.starts_with("invalid profile: 9 problems\n"),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 10);
    let kinds: Vec<FieldErrorKind> = errors.iter().map(|e| e.kind).collect();
    use FieldErrorKind::*;
    assert_eq!(
        kinds,
        [
            Missing,
            UnknownField,
            InvalidValue,
            InvalidValue,
            Duplicate,
            Missing,
            WrongType,
            InvalidValue,
            InvalidValue
        ]
    );
}

#[test]
fn the_same_problems_in_json_give_the_same_errors() {
    let json = r#"{
        "harness": "router", "colour": "blue",
        "model": {"provider": "openai", "default": "gpt-5", "allowed": ["a", "b"]},
        "budget": {"tokens": "lots"}
    }"#;
    let toml = r#"
        harness = "router"
        colour = "blue"
        [model]
        provider = "openai"
        default = "gpt-5"
        allowed = ["a", "b"]
        [budget]
        tokens = "lots"
    "#;
    assert_eq!(invalid_json(json), invalid_toml(toml));
}

#[test]
fn zero_and_negative_budgets_and_limits_are_rejected() {
    let text = format!(
        "{VALID}\n[budget]\ntokens = 0\ndollars = 0.0\nwall_secs = -5\nturns = 1.5\n\
         [resources]\ncpus = 0\nmemory_mb = -1\nwall_time_secs = 0\n"
    );
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        [
            "resources.cpus",
            "resources.memory_mb",
            "resources.wall_time_secs",
            "budget.tokens",
            "budget.dollars",
            "budget.wall_secs",
            "budget.turns",
        ],
        "{errors}"
    );
    assert_eq!(
        errors.at("budget.turns").unwrap().kind,
        FieldErrorKind::WrongType
    );
    assert_eq!(
        errors.at("budget.wall_secs").unwrap().value,
        Some(json!(-5))
    );
}

#[test]
fn temperature_outside_zero_to_two_is_rejected() {
    for (t, ok) in [
        ("0.0", true),
        ("2.0", true),
        ("1", true),
        ("-0.1", false),
        ("2.01", false),
    ] {
        let text = VALID.replace("allowed", &format!("temperature = {t}\nallowed"));
        let result = AgentProfile::from_toml_str(&text);
        assert_eq!(result.is_ok(), ok, "temperature {t}: {result:?}");
        if let Err(ProfileError::Invalid(errors)) = result {
            assert_eq!(single(&errors).path, "model.temperature");
        }
    }
}

#[test]
fn unknown_harness_is_rejected_with_the_known_ones() {
    let e = single(&invalid_toml(&VALID.replace("\"router\"", "\"cursor\""))).clone();
    assert_eq!(e.path, "harness");
    assert_eq!(
        e.to_string(),
        r#"harness: got "cursor", expected one of ["router","cli-base","claude-code","codex","opencode"]"#
    );
}

#[test]
fn duplicate_skill_tool_mcp_and_subagent_names_are_reported_at_the_second_use() {
    let text = format!(
        r#"{VALID}
[[skills]]
name = "s"
text = "one"
[[skills]]
name = "s"
path = "two.md"

[[tools]]
name = "t"
[[tools]]
name = "t"

[[mcp_servers]]
name = "m"
command = "run"
[[mcp_servers]]
name = "m"
url = "http://localhost:1/mcp"

[[subagents]]
name = "w"
harness = "codex"
model = {{ provider = "openai", default = "x" }}
[[subagents]]
name = "w"
harness = "codex"
model = {{ provider = "openai", default = "x" }}
"#
    );
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        [
            "skills[1].name",
            "tools[1].name",
            "mcp_servers[1].name",
            "subagents[1].name"
        ]
    );
    assert!(errors.iter().all(|e| e.kind == FieldErrorKind::Duplicate));
    assert_eq!(
        errors.at("tools[1].name").unwrap().to_string(),
        r#"tools[1].name: got "t", expected a tool name not already used by tools[0]"#
    );
}

#[test]
fn mcp_server_needs_exactly_one_transport_and_only_its_options() {
    let text = format!(
        r#"{VALID}
[[mcp_servers]]
name = "neither"
[[mcp_servers]]
name = "both"
command = "run"
url = "http://localhost/mcp"
[[mcp_servers]]
name = "http-with-args"
url = "https://example.com/mcp"
args = ["x"]
[[mcp_servers]]
name = "stdio-with-headers"
command = "run"
headers = {{ X-Key = "v" }}
[[mcp_servers]]
name = "bad-url"
url = "ftp://example.com"
[[mcp_servers]]
name = "empty-command"
command = ""
"#
    );
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        [
            "mcp_servers[0].command",
            "mcp_servers[1].url",
            "mcp_servers[2].args",
            "mcp_servers[3].headers",
            "mcp_servers[4].url",
            "mcp_servers[5].command",
        ],
        "{errors}"
    );
    assert_eq!(
        errors.at("mcp_servers[0].command").unwrap().to_string(),
        "mcp_servers[0].command: missing, expected `command` (a stdio server) or `url` (an HTTP server)"
    );
}

#[test]
fn skill_needs_exactly_one_of_text_and_path() {
    let text = format!(
        "{VALID}\n[[skills]]\nname = \"none\"\n[[skills]]\nname = \"both\"\ntext = \"t\"\npath = \"p\"\n\
         [[skills]]\nname = \"escape\"\npath = \"../secrets\"\n"
    );
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        ["skills[0].text", "skills[1].path", "skills[2].path"]
    );
}

#[test]
fn duplicate_allowed_models_and_write_roots_are_reported() {
    let text = VALID.replace(r#"["a", "b"]"#, r#"["a", "b", "a"]"#)
        + "\n[permissions]\nwrite_roots = [\"/w\", \"/w\", \"/w/../etc\"]\n";
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        [
            "model.allowed[2]",
            "permissions.write_roots[1]",
            "permissions.write_roots[2]"
        ]
    );
}

#[test]
fn errors_inside_subagents_carry_the_full_path() {
    let text = format!(
        "{VALID}\n[[subagents]]\nname = \"ok\"\nharness = \"codex\"\n[subagents.model]\nprovider = \"p\"\ndefault = \"x\"\n\
         [[subagents]]\nname = \"bad\"\nharness = \"codex\"\n[subagents.model]\nprovider = \"p\"\ndefault = \"x\"\nallowed = [\"y\"]\n"
    );
    let e = single(&invalid_toml(&text)).clone();
    assert_eq!(e.path, "subagents[1].model.default");
}

#[test]
fn null_is_rejected_with_a_hint_to_omit_the_field() {
    let errors = invalid_json(
        r#"{"name": "n", "harness": "router", "description": null,
            "model": {"provider": "p", "default": "m"}, "metadata": {"a": [1, null]}}"#,
    );
    assert_eq!(paths(&errors), ["description", "metadata.a[1]"]);
    assert!(
        errors
            .at("description")
            .unwrap()
            .expected
            .contains("omit the field")
    );
}

#[test]
fn wrong_type_for_a_whole_section_is_one_error() {
    let e = single(&invalid_json(
        r#"{"name": "n", "harness": "router", "model": "gpt-4"}"#,
    ))
    .clone();
    assert_eq!(
        (e.path.as_str(), e.kind),
        ("model", FieldErrorKind::WrongType)
    );
    let e = single(&invalid_json(r#"[1, 2]"#)).clone();
    assert_eq!(e.path, "");
    assert!(
        e.to_string()
            .starts_with("<root>: got [1,2], expected a profile"),
        "{e}"
    );
}

#[test]
fn toml_datetimes_and_non_finite_floats_are_field_errors() {
    let text =
        format!("{VALID}\n[metadata]\nwhen = 1979-05-27T07:32:00Z\n[resources]\ncpus = nan\n");
    let errors = invalid_toml(&text);
    assert_eq!(
        paths(&errors),
        ["metadata.when", "resources.cpus"],
        "{errors}"
    );
    assert!(errors.iter().all(|e| e.value.is_some()));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    match AgentProfile::from_toml_str("name = \"x\"\nharness = \n") {
        Err(ProfileError::Syntax {
            format: Format::Toml,
            line: Some(2),
            column: Some(_),
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    match AgentProfile::from_json_str("{\n  \"name\": \"x\",\n  oops\n}") {
        Err(
            e @ ProfileError::Syntax {
                format: Format::Json,
                line: Some(3),
                ..
            },
        ) => {
            assert!(
                e.to_string()
                    .starts_with("JSON syntax error at line 3, column"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_keys_are_errors_in_both_formats() {
    let json = AgentProfile::from_json_str(r#"{"name": "a", "name": "b"}"#).unwrap_err();
    assert!(
        json.to_string().contains(r#"duplicate key "name""#),
        "{json}"
    );
    let toml = AgentProfile::from_toml_str("name = \"a\"\nname = \"b\"\n").unwrap_err();
    assert!(
        matches!(
            toml,
            ProfileError::Syntax {
                format: Format::Toml,
                ..
            }
        ),
        "{toml}"
    );
}

#[test]
fn invalid_utf8_is_a_syntax_error_with_position() {
    let err = AgentProfile::from_slice(b"name = \"a\"\nx = \"\xff\"", Format::Toml).unwrap_err();
    assert!(
        matches!(
            err,
            ProfileError::Syntax {
                line: Some(2),
                column: Some(6),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn load_rejects_other_extensions_and_reports_missing_files() {
    let err = AgentProfile::load("profile.yaml").unwrap_err();
    assert!(
        matches!(&err, ProfileError::UnsupportedExtension { extension: Some(e), .. } if e == "yaml"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cannot load profile profile.yaml: extension `.yaml`, expected `.toml` or `.json`"
    );
    let err = AgentProfile::load("/nonexistent/dir/profile.toml").unwrap_err();
    assert!(matches!(err, ProfileError::Io { .. }), "{err:?}");
}

#[test]
fn validate_checks_profiles_built_in_code() {
    let mut profile = AgentProfile::from_toml_str(VALID).unwrap();
    profile.validate().unwrap();
    profile.model.default = "c".into();
    profile.budget.dollars = Some(f64::NAN);
    profile.name = String::new();
    let Err(ProfileError::Invalid(errors)) = profile.validate() else {
        panic!("expected validation errors");
    };
    assert_eq!(paths(&errors), ["name", "model.default", "budget.dollars"]);
}

#[test]
fn model_guard_refuses_models_outside_the_allowed_set() {
    let profile = AgentProfile::from_toml_str(VALID).unwrap();
    profile.ensure_model_allowed("a").unwrap();
    agentrt_profiles::ensure_model_allowed(&profile, "b").unwrap();
    let err = profile.ensure_model_allowed("A").unwrap_err();
    match &err {
        ProfileError::ModelNotAllowed {
            profile,
            model,
            allowed,
        } => {
            assert_eq!((profile.as_str(), model.as_str()), ("worker", "A"));
            assert_eq!(allowed, &["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        r#"model "A" is not allowed for profile "worker"; allowed models: ["a","b"]"#
    );
}

#[test]
fn with_an_empty_allowed_list_only_the_default_model_is_allowed() {
    let profile =
        AgentProfile::from_toml_str(&VALID.replace("allowed = [\"a\", \"b\"]", "")).unwrap();
    profile.ensure_model_allowed("a").unwrap();
    match profile.ensure_model_allowed("b") {
        Err(ProfileError::ModelNotAllowed { allowed, .. }) => assert_eq!(allowed, ["a"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn format_follows_the_extension_in_any_case() {
    use std::path::Path;
    assert_eq!(
        Format::from_path(Path::new("a/b.TOML")).unwrap(),
        Format::Toml
    );
    assert_eq!(
        Format::from_path(Path::new("b.json")).unwrap(),
        Format::Json
    );
    let err = Format::from_path(Path::new("profile")).unwrap_err();
    assert!(
        matches!(
            &err,
            ProfileError::UnsupportedExtension {
                extension: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("extension none"), "{err}");
}
