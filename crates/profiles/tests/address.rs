//! Canonical JSON and content addresses: what the canonical form looks like, and that the
//! address depends on the profile's content only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_profiles::{AgentProfile, ContentAddress, ProfileError};
use sha2::{Digest, Sha256};

const MINIMAL: &str = r#"
name = "m"
harness = "router"
[model]
provider = "p"
default = "x"
"#;

#[test]
fn canonical_json_sorts_keys_and_has_no_whitespace() {
    let p = AgentProfile::from_toml_str(MINIMAL).unwrap();
    assert_eq!(
        p.canonical_json(),
        r#"{"harness":"router","model":{"default":"x","provider":"p"},"name":"m"}"#
    );
}

#[test]
fn content_address_is_sha256_of_canonical_json() {
    let p = AgentProfile::from_toml_str(MINIMAL).unwrap();
    let expected = hex::encode(Sha256::digest(p.canonical_json().as_bytes()));
    assert_eq!(
        p.content_address().to_string(),
        format!("sha256:{expected}")
    );
    assert_eq!(p.content_address().to_hex(), expected);
    assert_eq!(p.content_address().digest().len(), 32);
}

#[test]
fn toml_and_json_of_the_same_profile_share_an_address() {
    let toml = AgentProfile::from_toml_str(
        r#"
        name = "w"
        harness = "codex"
        [model]
        provider = "openai"
        default = "a"
        allowed = ["a", "b"]
        temperature = 1
        [budget]
        dollars = 2
        [[mcp_servers]]
        name = "fs"
        command = "server"
        env = { B = "2", A = "1" }
        [metadata]
        nested = { z = [1, 2.5, "s"], a = true }
        "#,
    )
    .unwrap();
    let json = AgentProfile::from_json_str(
        r#"{"metadata": {"nested": {"a": true, "z": [1, 2.5, "s"]}},
            "mcp_servers": [{"env": {"A": "1", "B": "2"}, "command": "server", "name": "fs"}],
            "budget": {"dollars": 2.0},
            "model": {"temperature": 1.0, "allowed": ["a", "b"], "default": "a", "provider": "openai"},
            "harness": "codex", "name": "w"}"#,
    )
    .unwrap();
    assert_eq!(toml, json);
    assert_eq!(toml.canonical_json(), json.canonical_json());
    assert_eq!(toml.content_address(), json.content_address());
}

#[test]
fn spelled_out_defaults_do_not_change_the_address() {
    let minimal = AgentProfile::from_toml_str(MINIMAL).unwrap();
    let explicit = AgentProfile::from_toml_str(&format!(
        "{MINIMAL}\nallowed = []\n[permissions]\nnetwork = false\nexec = false\nwrite_roots = []\n\
         [resources]\n[budget]\n[metadata]\n"
    ))
    .unwrap();
    assert_eq!(explicit.content_address(), minimal.content_address());
}

#[test]
fn any_change_of_content_changes_the_address() {
    let base = AgentProfile::from_toml_str(MINIMAL).unwrap();
    let mut changed = base.clone();
    changed.model.allowed = vec!["x".into()];
    assert_ne!(changed.content_address(), base.content_address());
    let mut changed = base.clone();
    changed.metadata.insert("k".into(), serde_json::json!(1));
    assert_ne!(changed.content_address(), base.content_address());
    // Integers and floats are different values in metadata.
    let mut as_float = base.clone();
    as_float.metadata.insert("k".into(), serde_json::json!(1.0));
    assert_ne!(as_float.content_address(), changed.content_address());
}

#[test]
fn negative_zero_is_canonicalized_to_zero() {
    let zero = AgentProfile::from_toml_str(&format!("{MINIMAL}temperature = 0.0\n")).unwrap();
    let negative = AgentProfile::from_toml_str(&format!("{MINIMAL}temperature = -0.0\n")).unwrap();
    assert!(negative.canonical_json().contains(r#""temperature":0.0"#));
    assert_eq!(zero.content_address(), negative.content_address());
}

#[test]
fn content_address_parses_from_its_display_and_serializes_as_a_string() {
    let address = AgentProfile::from_toml_str(MINIMAL)
        .unwrap()
        .content_address();
    let shown = address.to_string();
    assert_eq!(shown.parse::<ContentAddress>().unwrap(), address);
    assert_eq!(
        shown
            .to_uppercase()
            .replace("SHA256", "sha256")
            .parse::<ContentAddress>()
            .unwrap(),
        address
    );
    let json = serde_json::to_string(&address).unwrap();
    assert_eq!(json, format!("\"{shown}\""));
    assert_eq!(
        serde_json::from_str::<ContentAddress>(&json).unwrap(),
        address
    );
}

#[test]
fn malformed_content_addresses_are_typed_errors() {
    for bad in [
        "",
        "sha256:",
        "sha256:abc",
        "md5:00",
        &format!("sha256:{}", "g".repeat(64)),
        &"0".repeat(64),
    ] {
        let err = bad.parse::<ContentAddress>().unwrap_err();
        assert!(
            matches!(&err, ProfileError::BadContentAddress { input } if input == bad),
            "{err:?}"
        );
    }
    assert!(serde_json::from_str::<ContentAddress>("\"sha256:zz\"").is_err());
}
