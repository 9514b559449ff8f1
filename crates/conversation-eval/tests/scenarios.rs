//! Scenario files: TOML, JSON, JSON Lines and directories load; every problem names the file,
//! the scenario and the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use agentrt_conversation_eval::{EvalError, FixtureKind, StopSignal, load_scenarios};

const GOOD: &str = r#"id = "ok"
[persona]
description = "A customer."
[instructions]
reason = "A refund."
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn error_text(path: &Path) -> String {
    load_scenarios(path).unwrap_err().to_string()
}

#[test]
fn the_example_scenarios_load_with_their_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/product_eval/scenarios");
    let loaded = load_scenarios(&dir).unwrap();
    let ids: Vec<&str> = loaded.iter().map(|l| l.scenario.id.as_str()).collect();
    assert_eq!(
        ids,
        ["ask-for-human", "refund-damaged", "refund-in-transit"]
    );
    let human = &loaded[0].scenario;
    assert_eq!(human.checks.stop, Some(StopSignal::Transfer));
    assert_eq!(human.limits.max_turns, 4);
    assert_eq!(human.limits.agent_steps, 8, "the default");
    assert_eq!(human.environment.tools[1].kind, FixtureKind::Update);
}

#[test]
fn json_and_json_lines_load_and_a_directory_takes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.json",
        r#"{"id": "a", "persona": {"description": "p"}, "instructions": {"reason": "r"}}"#,
    );
    write(
        dir.path(),
        "b.jsonl",
        "{\"id\": \"b1\", \"persona\": {\"description\": \"p\"}, \"instructions\": {\"reason\": \"r\"}}\n\n\
         {\"id\": \"b2\", \"persona\": {\"description\": \"p\"}, \"instructions\": {\"reason\": \"r\"}}\n",
    );
    write(dir.path(), "c.toml", GOOD);
    write(dir.path(), "notes.txt", "ignored");
    let ids: Vec<String> = load_scenarios(dir.path())
        .unwrap()
        .into_iter()
        .map(|l| l.scenario.id)
        .collect();
    assert_eq!(ids, ["a", "b1", "b2", "ok"]);
}

#[test]
fn every_problem_names_the_file_the_scenario_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        r#"id = "refund"
colour = "red"
[persona]
[instructions]
reason = "r"
known = ["a", 3]
[[environment.tools]]
name = "t"
description = "d"
kind = "delete"
[[environment.tools]]
name = "u"
description = "d"
kind = "update"
[checks]
stop = "done"
state = [{ path = "orders/A1", equals = 1 }]
[limits]
max_turns = -1
"#,
    );
    let text = error_text(&file);
    let prefix = format!("{}: scenario `refund`: ", file.display());
    for expected in [
        "colour: unknown field, expected one of id, description, persona",
        "persona.description: missing, expected a string",
        "instructions.known[1]: got 3, expected a string",
        "environment.tools[0].kind: got \"delete\", expected one of \"read\", \"update\", \"reply\"",
        "checks.stop: got \"done\", expected one of \"stop\", \"transfer\", \"out_of_scope\"",
        "limits.max_turns: got -1, expected a non-negative integer",
    ] {
        assert!(
            text.contains(&format!("{prefix}{expected}")),
            "{expected:?} in:\n{text}"
        );
    }
    // Rules checked once the shape is right: the update tool's missing parts, the pointer.
    let file = write(
        dir.path(),
        "rules.toml",
        &format!(
            "{GOOD}[[environment.tools]]\nname = \"u\"\ndescription = \"d\"\nkind = \"update\"\n\
             [checks]\nstate = [{{ path = \"orders\", equals = 1 }}]\n"
        ),
    );
    let text = error_text(&file);
    for expected in [
        "environment.tools[0].table: missing",
        "environment.tools[0].key: missing",
        "environment.tools[0].set: missing",
        "checks.state[0].path: got \"orders\", expected a JSON pointer",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
}

#[test]
fn syntax_errors_unnamed_scenarios_and_duplicate_ids_are_reported_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", "id = \n");
    assert!(error_text(&broken).starts_with(&format!("{}:1:", broken.display())));
    let lines = write(dir.path(), "many.jsonl", "{\"persona\": {}}\n{not json\n");
    let err = load_scenarios(&lines).unwrap_err();
    assert!(
        matches!(&err, EvalError::InvalidScenario { scenario, .. } if scenario == "#1"),
        "{err}"
    );
    let lines = write(dir.path(), "syntax.jsonl", "\n{not json\n");
    assert!(error_text(&lines).starts_with(&format!("{}:2:", lines.display())));
    let twice = tempfile::tempdir().unwrap();
    write(twice.path(), "a.toml", GOOD);
    write(twice.path(), "b.toml", GOOD);
    assert!(error_text(twice.path()).starts_with("scenario id `ok` is used twice"));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_scenarios(empty.path()),
        Err(EvalError::NoScenarios { .. })
    ));
    assert!(matches!(
        load_scenarios(&dir.path().join("missing.toml")),
        Err(EvalError::Io { .. })
    ));
}
