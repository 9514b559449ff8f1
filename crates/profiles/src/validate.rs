//! The schema walk: checks a JSON value tree against the profile schema and its rules,
//! collecting every problem with its path instead of stopping at the first.
//!
//! The walk runs on `serde_json::Value` so that one pass sees wrong types, unknown and missing
//! fields and rule violations together; typed deserialization happens only once it is clean.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::error::{FieldError, FieldErrorKind, render_list};
use crate::profile::{Harness, ToolCallMode};

/// Largest integer a profile holds: TOML integers are signed 64-bit.
const MAX_INT: u64 = i64::MAX as u64;

const PROFILE_FIELDS: &[&str] = &[
    "name",
    "description",
    "harness",
    "model",
    "system_prompt",
    "instructions",
    "skills",
    "tools",
    "mcp_servers",
    "permissions",
    "resources",
    "budget",
    "subagents",
    "metadata",
];
const MODEL_FIELDS: &[&str] = &[
    "provider",
    "default",
    "allowed",
    "base_url",
    "temperature",
    "max_tokens",
    "tool_calls",
    "stack",
];
const SKILL_FIELDS: &[&str] = &["name", "description", "text", "path"];
const TOOL_FIELDS: &[&str] = &["name", "config"];
const MCP_FIELDS: &[&str] = &["name", "command", "args", "env", "url", "headers"];
const PERMISSION_FIELDS: &[&str] = &["network", "write_roots", "exec"];
const RESOURCE_FIELDS: &[&str] = &["cpus", "memory_mb", "wall_time_secs"];
const BUDGET_FIELDS: &[&str] = &["tokens", "dollars", "wall_secs", "turns"];
const STACK_FIELDS: &[&str] = &[
    "connect_timeout_ms",
    "first_byte_timeout_ms",
    "idle_timeout_ms",
    "max_attempts",
    "max_concurrency",
    "requests_per_minute",
];

const NAME_RULE: &str =
    "a name of 1 to 64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit";

/// Path of field `key` under `parent` (`model.default`); keys that are not plain identifiers
/// are quoted (`env."MY VAR"`).
pub(crate) fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Path of element `i` of the array at `parent` (`skills[2]`).
pub(crate) fn index_path(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Check a whole profile document; returns every problem found, in schema order.
pub(crate) fn check_document(value: &Value, reported: &BTreeSet<String>) -> Vec<FieldError> {
    let mut checker = Checker {
        errors: Vec::new(),
        reported,
    };
    checker.profile("", value);
    checker.errors
}

struct Checker<'r> {
    errors: Vec<FieldError>,
    /// Paths already reported by an earlier stage; not reported again.
    reported: &'r BTreeSet<String>,
}

impl Checker<'_> {
    fn push(&mut self, path: &str, kind: FieldErrorKind, value: Option<&Value>, expected: &str) {
        if self.reported.contains(path) {
            return;
        }
        let mut expected = expected.to_owned();
        if value == Some(&Value::Null) {
            expected.push_str(" (null is not a value in profiles: omit the field instead)");
        }
        self.errors.push(FieldError {
            path: path.to_owned(),
            kind,
            value: value.cloned(),
            expected,
        });
    }

    fn wrong_type(&mut self, path: &str, value: &Value, expected: &str) {
        self.push(path, FieldErrorKind::WrongType, Some(value), expected);
    }

    fn invalid(&mut self, path: &str, value: &Value, expected: &str) {
        self.push(path, FieldErrorKind::InvalidValue, Some(value), expected);
    }

    /// Check that `value` is an object with only `known` fields and all `required` ones.
    fn object<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        what: &str,
        known: &[&str],
        required: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = value.as_object() else {
            self.wrong_type(path, value, &format!("{what} (a table / JSON object)"));
            return None;
        };
        for field in required {
            if !map.contains_key(*field) {
                self.push(
                    &child_path(path, field),
                    FieldErrorKind::Missing,
                    None,
                    &format!("`{field}` (a required field of {what})"),
                );
            }
        }
        for (key, field_value) in map {
            if !known.contains(&key.as_str()) {
                self.push(
                    &child_path(path, key),
                    FieldErrorKind::UnknownField,
                    Some(field_value),
                    &format!("one of the fields of {what}: {}", known.join(", ")),
                );
            }
        }
        Some(map)
    }

    fn string<'v>(&mut self, path: &str, value: &'v Value, expected: &str) -> Option<&'v str> {
        match value.as_str() {
            Some(s) => Some(s),
            None => {
                self.wrong_type(path, value, expected);
                None
            }
        }
    }

    fn non_empty<'v>(&mut self, path: &str, value: &'v Value, expected: &str) -> Option<&'v str> {
        let s = self.string(path, value, expected)?;
        if s.trim().is_empty() {
            self.invalid(path, value, expected);
            return None;
        }
        Some(s)
    }

    fn name<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let s = self.string(path, value, NAME_RULE)?;
        if !is_valid_name(s) {
            self.invalid(path, value, NAME_RULE);
            return None;
        }
        Some(s)
    }

    fn url(&mut self, path: &str, value: &Value) {
        const RULE: &str = "an http:// or https:// URL with a host and no whitespace";
        let Some(s) = self.string(path, value, RULE) else {
            return;
        };
        if !is_valid_url(s) {
            self.invalid(path, value, RULE);
        }
    }

    fn bool(&mut self, path: &str, value: &Value) {
        if !value.is_boolean() {
            self.wrong_type(path, value, "true or false");
        }
    }

    /// An integer in `1..=max`.
    fn positive_int(&mut self, path: &str, value: &Value, max: u64) {
        let expected = format!("an integer from 1 to {max}");
        if !value.is_i64() && !value.is_u64() {
            self.wrong_type(path, value, &expected);
            return;
        }
        match value.as_u64() {
            Some(n) if (1..=max).contains(&n) => {}
            _ => self.invalid(path, value, &expected),
        }
    }

    /// A finite number in `(min, max]` (or `[min, max]` when `min_inclusive`).
    fn number_in(&mut self, path: &str, value: &Value, min: f64, min_inclusive: bool, max: f64) {
        let expected = format!(
            "a number {} {min} and at most {max}",
            if min_inclusive {
                "at least"
            } else {
                "greater than"
            }
        );
        let Some(n) = value.as_f64() else {
            self.wrong_type(path, value, &expected);
            return;
        };
        let above_min = if min_inclusive { n >= min } else { n > min };
        if !(n.is_finite() && above_min && n <= max) {
            self.invalid(path, value, &expected);
        }
    }

    fn string_array<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        item: &str,
    ) -> Vec<(usize, &'v str)> {
        let Some(items) = value.as_array() else {
            self.wrong_type(path, value, &format!("an array of {item}s"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, v) in items.iter().enumerate() {
            if let Some(s) = self.non_empty(
                &index_path(path, i),
                v,
                &format!("{item} (a non-empty string)"),
            ) {
                out.push((i, s));
            }
        }
        out
    }

    /// A table of string values whose keys satisfy `key_ok`.
    fn string_map(&mut self, path: &str, value: &Value, key_rule: &str, key_ok: fn(&str) -> bool) {
        let Some(map) = value.as_object() else {
            self.wrong_type(path, value, "a table of strings");
            return;
        };
        for (key, v) in map {
            let p = child_path(path, key);
            if !key_ok(key) {
                self.invalid(&p, &Value::String(key.clone()), key_rule);
            }
            self.string(&p, v, "a string");
        }
    }

    /// A JSON object without nulls and without integers TOML cannot hold.
    fn free_object(&mut self, path: &str, value: &Value) {
        if !value.is_object() {
            self.wrong_type(path, value, "a table / JSON object");
            return;
        }
        self.free_value(path, value);
    }

    fn free_value(&mut self, path: &str, value: &Value) {
        match value {
            Value::Null => {
                self.wrong_type(path, value, "a string, number, boolean, array or table")
            }
            Value::Number(n) if n.is_u64() && n.as_u64().is_some_and(|u| u > MAX_INT) => self
                .invalid(
                    path,
                    value,
                    "an integer that fits in 64 signed bits (as TOML requires)",
                ),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.free_value(&index_path(path, i), item);
                }
            }
            Value::Object(map) => {
                for (key, v) in map {
                    self.free_value(&child_path(path, key), v);
                }
            }
            _ => {}
        }
    }

    /// An array of objects, each checked by `check`, which returns the entry's name if valid;
    /// names must be unique.
    fn named_list<'v>(
        &mut self,
        path: &str,
        value: &'v Value,
        what: &str,
        check: fn(&mut Self, &str, &'v Value) -> Option<&'v str>,
    ) {
        let Some(items) = value.as_array() else {
            self.wrong_type(path, value, &format!("an array of {what}s"));
            return;
        };
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = index_path(path, i);
            let Some(name) = check(self, &item_path, item) else {
                continue;
            };
            if let Some(first) = seen.get(name) {
                let name_path = child_path(&item_path, "name");
                self.push(
                    &name_path,
                    FieldErrorKind::Duplicate,
                    Some(&Value::String(name.to_owned())),
                    &format!(
                        "a {what} name not already used by {}",
                        index_path(path, *first)
                    ),
                );
            } else {
                seen.insert(name, i);
            }
        }
    }

    fn profile<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let map = self.object(
            path,
            value,
            "a profile",
            PROFILE_FIELDS,
            &["name", "harness", "model"],
        )?;
        let mut name = None;
        for field in PROFILE_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "name" => name = self.name(&p, v),
                "description" | "system_prompt" | "instructions" => {
                    self.non_empty(&p, v, "a non-empty string");
                }
                "harness" => self.harness(&p, v),
                "model" => self.model(&p, v),
                "skills" => self.named_list(&p, v, "skill", Self::skill),
                "tools" => self.named_list(&p, v, "tool", Self::tool),
                "mcp_servers" => self.named_list(&p, v, "MCP server", Self::mcp_server),
                "permissions" => self.permissions(&p, v),
                "resources" => self.resources(&p, v),
                "budget" => self.budget(&p, v),
                "subagents" => self.named_list(&p, v, "subagent", Self::profile),
                "metadata" => self.free_object(&p, v),
                _ => {}
            }
        }
        name
    }

    fn harness(&mut self, path: &str, value: &Value) {
        let names: Vec<String> = Harness::ALL.iter().map(|h| h.as_str().to_owned()).collect();
        let expected = format!("one of {}", render_list(&names));
        let Some(s) = self.string(path, value, &expected) else {
            return;
        };
        if !names.iter().any(|n| n == s) {
            self.invalid(path, value, &expected);
        }
    }

    fn model(&mut self, path: &str, value: &Value) {
        let Some(map) = self.object(
            path,
            value,
            "the model section",
            MODEL_FIELDS,
            &["provider", "default"],
        ) else {
            return;
        };
        let mut default = None;
        let mut allowed = Vec::new();
        let mut allowed_ok = true;
        for field in MODEL_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "provider" => {
                    self.non_empty(&p, v, "a provider name (a non-empty string)");
                }
                "default" => default = self.non_empty(&p, v, "a model name (a non-empty string)"),
                "allowed" => {
                    let len = v.as_array().map_or(0, Vec::len);
                    allowed = self.string_array(&p, v, "a model name");
                    allowed_ok = allowed.len() == len && v.is_array();
                    let mut seen = BTreeMap::new();
                    for (i, model) in &allowed {
                        if let Some(first) = seen.insert(*model, *i) {
                            self.push(
                                &index_path(&p, *i),
                                FieldErrorKind::Duplicate,
                                Some(&Value::String((*model).to_owned())),
                                &format!("a model not already listed at {}", index_path(&p, first)),
                            );
                            seen.insert(*model, first);
                        }
                    }
                }
                "base_url" => self.url(&p, v),
                "temperature" => self.number_in(&p, v, 0.0, true, 2.0),
                "max_tokens" => self.positive_int(&p, v, u64::from(u32::MAX)),
                "tool_calls" => self.tool_call_mode(&p, v),
                "stack" => self.stack(&p, v),
                _ => {}
            }
        }
        // Only judge membership when the whole allowed list was readable.
        if let Some(default) = default
            && allowed_ok
            && !allowed.is_empty()
            && !allowed.iter().any(|(_, m)| *m == default)
        {
            let list: Vec<String> = allowed.iter().map(|(_, m)| (*m).to_owned()).collect();
            self.invalid(
                &child_path(path, "default"),
                &Value::String(default.to_owned()),
                &format!(
                    "one of {} {}",
                    child_path(path, "allowed"),
                    render_list(&list)
                ),
            );
        }
    }

    fn skill<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let map = self.object(path, value, "a skill", SKILL_FIELDS, &["name"])?;
        let name = map
            .get("name")
            .and_then(|v| self.name(&child_path(path, "name"), v));
        if let Some(v) = map.get("description") {
            self.non_empty(&child_path(path, "description"), v, "a non-empty string");
        }
        match (map.get("text"), map.get("path")) {
            (Some(text), None) => {
                self.non_empty(
                    &child_path(path, "text"),
                    text,
                    "the skill's text (a non-empty string)",
                );
            }
            (None, Some(p)) => {
                let p_path = child_path(path, "path");
                if let Some(s) = self.non_empty(&p_path, p, "a file path (a non-empty string)") {
                    self.safe_path(&p_path, p, s);
                }
            }
            (None, None) => self.push(
                &child_path(path, "text"),
                FieldErrorKind::Missing,
                None,
                "`text` (inline content) or `path` (a file) on every skill",
            ),
            (Some(_), Some(p)) => self.invalid(
                &child_path(path, "path"),
                p,
                "no `path` when `text` is set (a skill has exactly one of them)",
            ),
        }
        name
    }

    fn safe_path(&mut self, path: &str, value: &Value, s: &str) {
        if s.contains('\0') || s.split(['/', '\\']).any(|part| part == "..") {
            self.invalid(
                path,
                value,
                "a path without `..` components or NUL characters",
            );
        }
    }

    fn tool<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let map = self.object(path, value, "a tool", TOOL_FIELDS, &["name"])?;
        let name = map
            .get("name")
            .and_then(|v| self.name(&child_path(path, "name"), v));
        if let Some(config) = map.get("config") {
            self.free_object(&child_path(path, "config"), config);
        }
        name
    }

    fn mcp_server<'v>(&mut self, path: &str, value: &'v Value) -> Option<&'v str> {
        let map = self.object(path, value, "an MCP server", MCP_FIELDS, &["name"])?;
        let name = map
            .get("name")
            .and_then(|v| self.name(&child_path(path, "name"), v));
        let command = map.get("command");
        let url = map.get("url");
        match (command, url) {
            (None, None) => self.push(
                &child_path(path, "command"),
                FieldErrorKind::Missing,
                None,
                "`command` (a stdio server) or `url` (an HTTP server)",
            ),
            (Some(_), Some(u)) => self.invalid(
                &child_path(path, "url"),
                u,
                "no `url` when `command` is set (a server is either stdio or HTTP)",
            ),
            _ => {}
        }
        if let Some(c) = command {
            self.non_empty(
                &child_path(path, "command"),
                c,
                "a program to run (a non-empty string)",
            );
        }
        if let Some(u) = url {
            self.url(&child_path(path, "url"), u);
        }
        if let Some(args) = map.get("args") {
            let p = child_path(path, "args");
            if command.is_none() && url.is_some() {
                self.invalid(&p, args, "no `args` on an HTTP server (`url` is set)");
            } else if let Some(items) = args.as_array() {
                for (i, a) in items.iter().enumerate() {
                    self.string(&index_path(&p, i), a, "an argument (a string)");
                }
            } else {
                self.wrong_type(&p, args, "an array of strings");
            }
        }
        if let Some(env) = map.get("env") {
            let p = child_path(path, "env");
            if command.is_none() && url.is_some() {
                self.invalid(&p, env, "no `env` on an HTTP server (`url` is set)");
            } else {
                self.string_map(
                    &p,
                    env,
                    "an environment variable name (non-empty, no `=` or NUL)",
                    |k| !k.is_empty() && !k.contains(['=', '\0']),
                );
            }
        }
        if let Some(headers) = map.get("headers") {
            let p = child_path(path, "headers");
            if command.is_some() && url.is_none() {
                self.invalid(
                    &p,
                    headers,
                    "no `headers` on a stdio server (`command` is set)",
                );
            } else {
                self.string_map(
                    &p,
                    headers,
                    "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
                    is_header_name,
                );
            }
        }
        name
    }

    fn permissions(&mut self, path: &str, value: &Value) {
        let Some(map) = self.object(
            path,
            value,
            "the permissions section",
            PERMISSION_FIELDS,
            &[],
        ) else {
            return;
        };
        for field in PERMISSION_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "network" | "exec" => self.bool(&p, v),
                "write_roots" => {
                    let roots = self.string_array(&p, v, "a directory");
                    let mut seen = BTreeMap::new();
                    for (i, root) in roots {
                        let ip = index_path(&p, i);
                        let root_value = Value::String(root.to_owned());
                        self.safe_path(&ip, &root_value, root);
                        if let Some(first) = seen.insert(root, i) {
                            self.push(
                                &ip,
                                FieldErrorKind::Duplicate,
                                Some(&root_value),
                                &format!(
                                    "a directory not already listed at {}",
                                    index_path(&p, first)
                                ),
                            );
                            seen.insert(root, first);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn resources(&mut self, path: &str, value: &Value) {
        let Some(map) = self.object(path, value, "the resources section", RESOURCE_FIELDS, &[])
        else {
            return;
        };
        for field in RESOURCE_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "cpus" => self.number_in(&p, v, 0.0, false, 4096.0),
                _ => self.positive_int(&p, v, MAX_INT),
            }
        }
    }

    fn tool_call_mode(&mut self, path: &str, value: &Value) {
        let names: Vec<String> = ToolCallMode::ALL
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect();
        let expected = format!("one of {}", render_list(&names));
        let Some(s) = self.string(path, value, &expected) else {
            return;
        };
        if !names.iter().any(|n| n == s) {
            self.invalid(path, value, &expected);
        }
    }

    fn stack(&mut self, path: &str, value: &Value) {
        let Some(map) = self.object(path, value, "the model stack section", STACK_FIELDS, &[])
        else {
            return;
        };
        for field in STACK_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "connect_timeout_ms" | "first_byte_timeout_ms" | "idle_timeout_ms" => {
                    self.positive_int(&p, v, MAX_INT)
                }
                _ => self.positive_int(&p, v, u64::from(u32::MAX)),
            }
        }
    }

    fn budget(&mut self, path: &str, value: &Value) {
        let Some(map) = self.object(path, value, "the budget section", BUDGET_FIELDS, &[]) else {
            return;
        };
        for field in BUDGET_FIELDS {
            let Some(v) = map.get(*field) else { continue };
            let p = child_path(path, field);
            match *field {
                "dollars" => self.number_in(&p, v, 0.0, false, f64::MAX),
                "turns" => self.positive_int(&p, v, u64::from(u32::MAX)),
                _ => self.positive_int(&p, v, MAX_INT),
            }
        }
    }
}

/// Whether `s` is a valid profile, skill, tool, MCP server or subagent name.
pub(crate) fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_valid_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let Some(rest) = rest else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}
