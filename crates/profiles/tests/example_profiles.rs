//! Every example profile under `examples/profiles/` loads, validates and round-trips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_profiles::{AgentProfile, Harness, McpTransport, SkillSource};

fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/profiles"
    ))
}

fn example(name: &str) -> AgentProfile {
    AgentProfile::load(examples_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_example_profile_loads_validates_and_round_trips() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let profile =
            AgentProfile::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        profile.validate().unwrap();
        let json = serde_json::to_string(&profile).unwrap();
        assert_eq!(AgentProfile::from_json_str(&json).unwrap(), profile);
        let toml = toml::to_string(&profile).unwrap();
        assert_eq!(AgentProfile::from_toml_str(&toml).unwrap(), profile);
        loaded += 1;
    }
    assert!(
        loaded >= 3,
        "expected at least 3 example profiles, found {loaded}"
    );
}

#[test]
fn minimal_router_has_only_the_required_fields() {
    let p = example("minimal-router.toml");
    assert_eq!(p.name, "minimal-router");
    assert_eq!(p.harness, Harness::Router);
    assert!(p.model.allowed.is_empty());
    assert_eq!(p.model.allowed_models(), [p.model.default.as_str()]);
    assert!(p.skills.is_empty() && p.tools.is_empty() && p.subagents.is_empty());
    assert_eq!(p.permissions, Default::default());
}

#[test]
fn coding_worker_declares_sandbox_permissions_resources_and_mcp_servers() {
    let p = example("coding-worker.toml");
    assert_eq!(p.harness, Harness::ClaudeCode);
    assert!(p.permissions.exec && !p.permissions.network);
    assert_eq!(p.permissions.write_roots, ["/workspace", "/tmp"]);
    assert_eq!(p.resources.cpus, Some(1.5));
    assert_eq!(p.resources.memory_mb, Some(2048));
    assert!(matches!(&p.skills[0].source, SkillSource::Inline(t) if t.contains("iterators")));
    assert_eq!(
        p.skills[1].source,
        SkillSource::Path("skills/repo-map.md".into())
    );
    assert!(matches!(
        &p.mcp_servers[0].transport,
        McpTransport::Stdio { command, args, env }
            if command == "npx" && args.len() == 3 && env["NODE_ENV"] == "production"
    ));
    assert!(matches!(
        &p.mcp_servers[1].transport,
        McpTransport::Http { url, headers }
            if url.starts_with("https://") && headers.contains_key("Authorization")
    ));
    assert_eq!(p.tools[0].config.as_ref().unwrap()["timeout_secs"], 120);
}

#[test]
fn supervisor_has_budget_defaults_and_complete_subagent_profiles() {
    let p = example("supervisor.toml");
    assert_eq!(p.budget.tokens, Some(2_000_000));
    assert_eq!(p.budget.wall_secs, Some(3600));
    let names: Vec<&str> = p.subagents.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["researcher", "implementer"]);
    let implementer = p.subagent("implementer").unwrap();
    assert!(p.subagent("nobody").is_none());
    assert_eq!(implementer.harness, Harness::Codex);
    assert_eq!(implementer.resources.cpus, Some(2.0));
    assert!(implementer.ensure_model_allowed("gpt-5-codex").is_ok());
    assert!(implementer.ensure_model_allowed("gpt-4.1").is_err());
}

#[test]
fn json_example_loads_like_toml_ones() {
    let p = example("reviewer.json");
    assert_eq!(p.harness, Harness::Opencode);
    assert_eq!(
        p.model.base_url.as_deref(),
        Some("http://127.0.0.1:8080/v1")
    );
    // An explicitly empty list is the default: it does not change the address.
    let without = AgentProfile::from_json_str(
        &std::fs::read_to_string(examples_dir().join("reviewer.json"))
            .unwrap()
            .replace(r#""permissions": { "write_roots": [] },"#, ""),
    )
    .unwrap();
    assert_eq!(without.content_address(), p.content_address());
}
