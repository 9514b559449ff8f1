//! The user simulator: an LLM playing the scenario's persona under a fixed rule set.
//!
//! The rules follow τ-bench's user simulator and what its users report going wrong (simulators
//! that stop early, break character, invent facts or send an empty turn): one message at a
//! time, facts only when asked, never invented, always in character, and the conversation ends
//! with a stop signal sent as a message of its own.

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// How the simulated user ended the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    /// `###STOP###`: the user is done (their reason was handled, or they gave up).
    Stop,
    /// `###TRANSFER###`: the user asks for, or was handed to, a human.
    Transfer,
    /// `###OUT-OF-SCOPE###`: the conversation went where the user's instructions say nothing.
    OutOfScope,
}

impl StopSignal {
    /// Every signal, in the order they are looked for.
    pub const ALL: [StopSignal; 3] = [
        StopSignal::Stop,
        StopSignal::Transfer,
        StopSignal::OutOfScope,
    ];

    /// The token the simulator sends.
    pub fn token(self) -> &'static str {
        match self {
            StopSignal::Stop => "###STOP###",
            StopSignal::Transfer => "###TRANSFER###",
            StopSignal::OutOfScope => "###OUT-OF-SCOPE###",
        }
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.token())
    }
}

/// What one simulator reply amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SimulatorTurn {
    /// A message for the agent.
    Message(String),
    /// The conversation is over.
    Signal(StopSignal),
    /// Empty, or no message at all (why, for the report).
    Malformed(String),
}

/// Reads one simulator reply. A stop token ends the conversation even when the model wrapped
/// it in other text (the intent is unambiguous; τ²-bench reads it the same way).
pub(crate) fn read_turn(reply: Option<&str>) -> SimulatorTurn {
    let text = reply.unwrap_or("").trim();
    if let Some(signal) = StopSignal::ALL
        .into_iter()
        .find(|s| text.contains(s.token()))
    {
        return SimulatorTurn::Signal(signal);
    }
    if text.is_empty() {
        return SimulatorTurn::Malformed("the simulator's reply was empty".into());
    }
    if text.starts_with("###") {
        return SimulatorTurn::Malformed(format!(
            "the simulator sent an unknown signal: {}",
            clip(text, 60)
        ));
    }
    SimulatorTurn::Message(text.to_owned())
}

/// The agent's greeting the simulator answers first (as τ-bench opens).
pub(crate) const GREETING: &str = "Hi! How can I help you today?";

/// What the simulator is told after a malformed turn (its one retry).
pub(crate) const RETRY: &str = "(Your last reply was not a message. Reply with exactly one \
message to the agent, in character, or with a stop signal on its own.)";

/// The simulator's system prompt: the fixed rule set, then the persona and instructions.
pub(crate) fn system_prompt(scenario: &Scenario) -> String {
    let persona = &scenario.persona;
    let ins = &scenario.instructions;
    let mut out = String::from(
        "You play a user (a customer) talking to a support agent. You are not an assistant: \
         never help the agent, never answer as the agent.\n\nRules:\n\
         - Write one message at a time, as the user, in plain words. Never write the agent's \
           part.\n\
         - Do not say everything at once: give only what the current step needs.\n\
         - Reveal a fact you know only when the agent asks for it, or when the conversation \
           cannot move without it.\n\
         - Never invent facts. If the agent asks for something not listed below, say you do \
           not know or do not have it.\n\
         - Stay in character the whole conversation; never mention these rules or that you are \
           simulated.\n\
         - Do not stop before your reason for talking is handled or clearly refused.\n\
         - When you are done, send ###STOP### as a message of its own. If you are handed to a \
           human, or you ask for one and the agent agrees, send ###TRANSFER###. If the \
           conversation goes where your instructions say nothing, send ###OUT-OF-SCOPE###.\n\n",
    );
    out.push_str("Who you are: ");
    if let Some(name) = &persona.name {
        out.push_str(&format!("{name}. "));
    }
    out.push_str(&persona.description);
    out.push_str(&format!("\n\nWhy you are here: {}\n", ins.reason));
    if !ins.known.is_empty() {
        out.push_str("\nFacts you know (reveal each only when asked):\n");
        for fact in &ins.known {
            out.push_str(&format!("- {fact}\n"));
        }
    }
    if !ins.unknown.is_empty() {
        out.push_str("\nThings you do not know (say so if asked; never guess):\n");
        for fact in &ins.unknown {
            out.push_str(&format!("- {fact}\n"));
        }
    }
    if let Some(behaviour) = &ins.behaviour {
        out.push_str(&format!("\nHow you behave: {behaviour}\n"));
    }
    out
}

/// At most `max` characters of `text`, marked when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_token_is_a_signal_and_an_empty_reply_is_malformed() {
        assert_eq!(
            read_turn(Some(" ###STOP### ")),
            SimulatorTurn::Signal(StopSignal::Stop)
        );
        assert_eq!(
            read_turn(Some("thanks, bye\n###TRANSFER###")),
            SimulatorTurn::Signal(StopSignal::Transfer)
        );
        assert_eq!(
            read_turn(Some("###OUT-OF-SCOPE###")),
            SimulatorTurn::Signal(StopSignal::OutOfScope)
        );
        assert!(matches!(
            read_turn(Some("  \n")),
            SimulatorTurn::Malformed(_)
        ));
        assert!(matches!(read_turn(None), SimulatorTurn::Malformed(_)));
        assert!(matches!(
            read_turn(Some("###DONE###")),
            SimulatorTurn::Malformed(_)
        ));
        assert_eq!(
            read_turn(Some("my order is A1")),
            SimulatorTurn::Message("my order is A1".into())
        );
    }
}
