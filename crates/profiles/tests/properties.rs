//! Property tests: round trips are identity, the content address ignores layout, and loading
//! never panics, whatever the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use agentrt_profiles::{
    AgentProfile, BudgetDefaults, Format, Harness, McpServer, McpTransport, ModelSpec, Permissions,
    ProfileError, ProfileTool, Resources, Skill, SkillSource, StackSettings, ToolCallMode,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

// ---------- generators of valid profiles ----------

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,12}"
}

fn text() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("non-blank", |s| !s.trim().is_empty())
}

/// Make names unique by suffixing the index (keeps them valid: at most 64 characters).
fn unique<T>(mut items: Vec<T>, name_of: fn(&mut T) -> &mut String) -> Vec<T> {
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter_mut().enumerate() {
        let n = name_of(item);
        if !seen.insert(n.clone()) {
            n.push_str(&format!("-{i}"));
            seen.insert(n.clone());
        }
    }
    items
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::num::f64::NORMAL.prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// JSON without nulls (what profiles accept in free-form places).
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_ ]{1,8}", json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_-]{0,8}", any::<String>(), 0..3)
}

fn model() -> impl Strategy<Value = ModelSpec> {
    (
        name(),
        prop::collection::vec(name(), 0..4),
        any::<prop::sample::Index>(),
        prop::option::of(prop_oneof![
            Just("http://127.0.0.1:8080/v1".to_owned()),
            Just("https://api.example.com".to_owned())
        ]),
        prop::option::of(0.0f64..=2.0),
        prop::option::of(1u32..),
    )
        .prop_map(
            |(provider, allowed, pick, base_url, temperature, max_tokens)| {
                let allowed: Vec<String> = allowed
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let default = if allowed.is_empty() {
                    format!("{provider}-model")
                } else {
                    allowed[pick.index(allowed.len())].clone()
                };
                ModelSpec {
                    provider,
                    default,
                    allowed,
                    base_url,
                    temperature,
                    max_tokens,
                    tool_calls: ToolCallMode::default(),
                    stack: StackSettings::default(),
                }
            },
        )
}

fn skill() -> impl Strategy<Value = Skill> {
    (
        name(),
        prop::option::of(text()),
        prop_oneof![
            text().prop_map(SkillSource::Inline),
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}\\.md".prop_map(SkillSource::Path),
        ],
    )
        .prop_map(|(name, description, source)| Skill {
            name,
            description,
            source,
        })
}

fn tool() -> impl Strategy<Value = ProfileTool> {
    (name(), prop::option::of(json_object()))
        .prop_map(|(name, config)| ProfileTool { name, config })
}

fn mcp_server() -> impl Strategy<Value = McpServer> {
    let stdio = (
        "[a-z]{1,10}",
        prop::collection::vec(any::<String>(), 0..3),
        string_map(),
    )
        .prop_map(|(command, args, env)| McpTransport::Stdio { command, args, env });
    let http = ("[a-z]{1,10}", string_map()).prop_map(|(host, headers)| McpTransport::Http {
        url: format!("https://{host}.example/mcp"),
        headers,
    });
    (name(), prop_oneof![stdio, http]).prop_map(|(name, transport)| McpServer { name, transport })
}

fn permissions() -> impl Strategy<Value = Permissions> {
    (
        any::<bool>(),
        prop::collection::btree_set("/?[a-z]{1,6}(/[a-z]{1,6}){0,2}", 0..3),
        any::<bool>(),
    )
        .prop_map(|(network, roots, exec)| Permissions {
            network,
            write_roots: roots.into_iter().collect(),
            exec,
        })
}

fn resources() -> impl Strategy<Value = Resources> {
    (
        prop::option::of(0.01f64..64.0),
        prop::option::of(1u64..=i64::MAX as u64),
        prop::option::of(1u64..100_000),
    )
        .prop_map(|(cpus, memory_mb, wall_time_secs)| Resources {
            cpus,
            memory_mb,
            wall_time_secs,
        })
}

fn budget() -> impl Strategy<Value = BudgetDefaults> {
    (
        prop::option::of(1u64..=i64::MAX as u64),
        prop::option::of(1e-6f64..1e9),
        prop::option::of(1u64..1_000_000),
        prop::option::of(1u32..),
    )
        .prop_map(|(tokens, dollars, wall_secs, turns)| BudgetDefaults {
            tokens,
            dollars,
            wall_secs,
            turns,
        })
}

fn harness() -> impl Strategy<Value = Harness> {
    prop::sample::select(Harness::ALL.to_vec())
}

fn leaf_profile() -> impl Strategy<Value = AgentProfile> {
    (
        (name(), prop::option::of(text()), harness(), model()),
        (prop::option::of(text()), prop::option::of(text())),
        (
            prop::collection::vec(skill(), 0..3),
            prop::collection::vec(tool(), 0..3),
            prop::collection::vec(mcp_server(), 0..3),
        ),
        (permissions(), resources(), budget(), json_object()),
    )
        .prop_map(
            |(
                (name, description, harness, model),
                (system_prompt, instructions),
                (skills, tools, mcp_servers),
                (permissions, resources, budget, metadata),
            )| AgentProfile {
                name,
                description,
                harness,
                model,
                system_prompt,
                instructions,
                skills: unique(skills, |s| &mut s.name),
                tools: unique(tools, |t| &mut t.name),
                mcp_servers: unique(mcp_servers, |m| &mut m.name),
                permissions,
                resources,
                budget,
                subagents: Vec::new(),
                metadata,
            },
        )
}

/// Valid profiles, with subagents nested up to two levels.
fn profile() -> impl Strategy<Value = AgentProfile> {
    leaf_profile().prop_recursive(2, 6, 3, |inner| {
        (leaf_profile(), prop::collection::vec(inner, 0..3)).prop_map(|(mut p, subs)| {
            p.subagents = unique(subs, |s| &mut s.name);
            p
        })
    })
}

// ---------- a JSON writer with arbitrary key order and whitespace ----------

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn ws(&mut self) -> &'static str {
        ["", " ", "\n", "\t", "  \r\n  "][(self.next() % 5) as usize]
    }
}

fn scrambled_json(value: &Value, rng: &mut Lcg, out: &mut String) {
    out.push_str(rng.ws());
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                scrambled_json(item, rng, out);
            }
            out.push_str(rng.ws());
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Fisher-Yates with our generator.
            for i in (1..entries.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                entries.swap(i, j);
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(rng.ws());
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(rng.ws());
                out.push(':');
                scrambled_json(v, rng, out);
            }
            out.push_str(rng.ws());
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
    out.push_str(rng.ws());
}

// ---------- structurally random documents ----------

const KEYS: &[&str] = &[
    "name",
    "description",
    "harness",
    "model",
    "provider",
    "default",
    "allowed",
    "base_url",
    "temperature",
    "max_tokens",
    "system_prompt",
    "instructions",
    "skills",
    "text",
    "path",
    "tools",
    "config",
    "mcp_servers",
    "command",
    "args",
    "env",
    "url",
    "headers",
    "permissions",
    "network",
    "write_roots",
    "exec",
    "resources",
    "cpus",
    "memory_mb",
    "wall_time_secs",
    "budget",
    "tokens",
    "dollars",
    "wall_secs",
    "turns",
    "subagents",
    "metadata",
    "bogus",
    "",
];

/// Random JSON (with nulls, big numbers, plausible keys and harness names).
fn random_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec!["router", "codex", "x", "", "http://h/", "a/../b"])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// A valid profile's JSON with random edits: fields removed, replaced or added anywhere.
fn mutated_profile() -> impl Strategy<Value = Value> {
    (
        profile(),
        prop::collection::vec((any::<u64>(), 0u8..3, random_json()), 1..4),
    )
        .prop_map(|(p, edits)| {
            let mut value = serde_json::to_value(&p).unwrap();
            for (seed, op, replacement) in edits {
                mutate(&mut value, seed, op, replacement);
            }
            value
        })
}

fn mutate(value: &mut Value, mut seed: u64, op: u8, replacement: Value) {
    let mut node = value;
    // Walk down a random path.
    loop {
        let next_seed = seed / 7;
        let descend = !seed.is_multiple_of(7);
        seed = next_seed;
        let len = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if !descend || len == 0 {
            break;
        }
        let i = (seed as usize) % len;
        seed /= 3;
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
    match (op, &mut *node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(seed as usize % m.len()).unwrap().clone();
            m.remove(&key);
        }
        (1, Value::Object(m)) => {
            m.insert(KEYS[seed as usize % KEYS.len()].to_owned(), replacement);
        }
        _ => *node = replacement,
    }
}

/// Load outcome checks shared by the never-panics properties.
fn check_outcome(result: Result<AgentProfile, ProfileError>) -> Result<(), TestCaseError> {
    match result {
        Ok(p) => {
            // Anything that loads is valid and survives a round trip.
            prop_assert!(p.validate().is_ok());
            let again = AgentProfile::from_json_str(&serde_json::to_string(&p).unwrap()).unwrap();
            prop_assert_eq!(again, p);
        }
        Err(ProfileError::Invalid(errors)) => {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(!e.expected.is_empty());
                // The schema walk and the typed model never disagree.
                prop_assert!(
                    !e.expected.contains("the typed model accepts"),
                    "schema walk accepted what serde rejected: {}",
                    e
                );
            }
        }
        Err(ProfileError::Syntax { message, .. }) => prop_assert!(!message.is_empty()),
        Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn generated_profiles_are_valid(p in profile()) {
        prop_assert!(p.validate().is_ok(), "{:?}", p.validate());
    }

    #[test]
    fn json_round_trip_is_identity(p in profile()) {
        let text = serde_json::to_string_pretty(&p).unwrap();
        prop_assert_eq!(AgentProfile::from_json_str(&text).unwrap(), p);
    }

    #[test]
    fn toml_round_trip_is_identity(p in profile()) {
        let text = toml::to_string(&p).unwrap();
        let back = AgentProfile::from_toml_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- TOML ---\n{text}")))?;
        prop_assert_eq!(back, p);
    }

    #[test]
    fn canonical_json_round_trips_and_is_a_fixed_point(p in profile()) {
        let canonical = p.canonical_json();
        let back = AgentProfile::from_json_str(&canonical).unwrap();
        prop_assert_eq!(back.canonical_json(), canonical);
        prop_assert_eq!(back, p);
    }

    #[test]
    fn content_address_ignores_key_order_and_whitespace(p in profile(), seed in any::<u64>()) {
        let mut text = String::new();
        scrambled_json(&serde_json::to_value(&p).unwrap(), &mut Lcg(seed), &mut text);
        let reloaded = AgentProfile::from_json_str(&text).unwrap();
        prop_assert_eq!(reloaded.content_address(), p.content_address());
        let as_toml = AgentProfile::from_toml_str(&toml::to_string_pretty(&p).unwrap()).unwrap();
        prop_assert_eq!(as_toml.content_address(), p.content_address());
    }

    #[test]
    fn different_profiles_have_different_addresses(p in profile(), q in profile()) {
        prop_assert_eq!(p == q, p.content_address() == q.content_address());
    }

    #[test]
    fn loading_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for format in [Format::Toml, Format::Json] {
            check_outcome(AgentProfile::from_slice(&bytes, format))?;
        }
    }

    #[test]
    fn loading_arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check_outcome(AgentProfile::from_toml_str(&text))?;
        check_outcome(AgentProfile::from_json_str(&text))?;
    }

    #[test]
    fn loading_random_documents_never_panics(value in random_json()) {
        check_outcome(AgentProfile::from_json_str(&value.to_string()))?;
        if let Ok(text) = toml::to_string(&value) {
            check_outcome(AgentProfile::from_toml_str(&text))?;
        }
    }

    #[test]
    fn loading_mutated_profiles_never_panics(value in mutated_profile()) {
        check_outcome(AgentProfile::from_json_str(&value.to_string()))?;
        if let Ok(text) = toml::to_string(&value) {
            check_outcome(AgentProfile::from_toml_str(&text))?;
        }
    }
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(matches!(
        AgentProfile::from_json_str(&json),
        Err(ProfileError::Syntax { .. })
    ));
    let toml = format!("x = {}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(matches!(
        AgentProfile::from_toml_str(&toml),
        Err(ProfileError::Syntax { .. })
    ));
    let dotted = format!("{} = 1", vec!["a"; depth].join("."));
    assert!(AgentProfile::from_toml_str(&dotted).is_err());
}
