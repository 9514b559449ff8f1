//! The surface: which texts of a profile may change, read and applied exactly.

use agentrt_improvement::{CandidateTexts, ImproveError, Surface, apply_winner_to_profile};
use agentrt_profiles::AgentProfile;

fn profile() -> AgentProfile {
    AgentProfile::from_toml_str(
        r#"
name = "p"
harness = "router"
system_prompt = "You are terse."
instructions = "Cite sources."
[model]
provider = "openai-compatible"
default = "m"
[[skills]]
name = "style"
text = "Short sentences."
[[skills]]
name = "manual"
path = "manual.md"
[[tools]]
name = "search"
config = { description = "Searches the web.", limit = 3 }
[[tools]]
name = "calc"
"#,
    )
    .expect("profile")
}

#[test]
fn reading_then_applying_gives_back_the_same_profile() {
    let p = profile();
    let surface = Surface::all_texts(&p);
    assert_eq!(
        surface.describe(),
        "system_prompt, instructions, skill:style, tool:search"
    );
    let texts = surface.read(&p).expect("read");
    assert_eq!(texts.get("tool:search"), Some("Searches the web."));
    assert_eq!(surface.apply(&p, &texts).expect("apply"), p);
    assert_eq!(
        surface.apply(&p, &texts).expect("apply").content_address(),
        p.content_address()
    );
}

#[test]
fn applying_changes_exactly_the_named_components() {
    let p = profile();
    let mut winner = CandidateTexts::default();
    winner.set("skill:style", "Very short sentences.");
    winner.set("tool:search", "Searches the web; cite the URL.");
    let out = apply_winner_to_profile(&p, &winner).expect("apply");
    let mut expected = p.clone();
    expected.skills[0].source =
        agentrt_profiles::SkillSource::Inline("Very short sentences.".into());
    expected.tools[0].config.as_mut().expect("config").insert(
        "description".into(),
        "Searches the web; cite the URL.".into(),
    );
    assert_eq!(out, expected);
    // The tool's other config keys are untouched.
    assert_eq!(out.tools[0].config.as_ref().expect("config")["limit"], 3);
}

#[test]
fn a_malformed_winner_is_a_typed_configuration_error() {
    let p = profile();
    for (component, expected) in [
        ("skill:missing", "no skill named `missing`"),
        ("skill:manual", "only inline skill text can change"),
        ("tool:nope", "no tool named `nope`"),
        ("temperature", "expected `system_prompt`"),
    ] {
        let mut winner = CandidateTexts::default();
        winner.set(component, "x");
        match apply_winner_to_profile(&p, &winner) {
            Err(ImproveError::MalformedCandidate { profile, reason }) => {
                assert_eq!(profile, "p");
                assert!(reason.contains(expected), "{component}: {reason}");
            }
            other => panic!("{component}: expected MalformedCandidate, got {other:?}"),
        }
    }
}
