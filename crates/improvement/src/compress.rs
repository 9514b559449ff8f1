//! Prompt compression: a prompt rewritten to a target fraction of its words by one fixed model.
//!
//! The compressor is a profile (its model, its system prompt) run once through the one model
//! stack ([`RolloutContext::tool_loop`]: `ToolLoop::from_profile`, the run's store, budget and
//! prices) at temperature 0, one turn, no tools — the same model for every prompt, so two
//! compressions differ only by their input. The result, [`Compression`], keeps the exact prompts
//! the model was sent (read back from its recorded session), the output and the word counts.
//!
//! An output under [`COMPRESSION_FLOOR`] of the target word count is not a compression — a
//! one-line summary, a refusal, a fragment is a different treatment — and fails loud with
//! [`ImproveError::DegenerateCompression`] instead of standing as a very good ratio.

use agentrt_core_loop::model::Message;
use agentrt_core_loop::{RuntimeEvent, SessionUsage, StopReason};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::SessionId;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::ImproveError;
use crate::evaluator::RolloutContext;
use crate::search::extract_text;

/// The least fraction of the target word count a compression may have: 0.2.
pub const COMPRESSION_FLOOR: f64 = 0.2;

/// One compression, as its artifact keeps it: the exact prompts, the output, the counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    /// The compressor's model id.
    pub model: String,
    /// The compressor profile's content address.
    pub profile: String,
    /// The target ratio (output words / input words) asked for.
    pub ratio: f64,
    /// The prompt that was compressed, exactly as given.
    pub input: String,
    /// The user message the compressor was sent: the instruction with the prompt, exactly.
    pub instruction: String,
    /// Every message the model was sent (its system prompt, if the profile has one, and the
    /// instruction), as its session recorded them.
    pub messages: Vec<Message>,
    /// The model's reply, exactly.
    pub answer: String,
    /// The compressed prompt: the reply's fenced block, or the whole reply trimmed.
    pub output: String,
    /// Words of the input.
    pub input_words: usize,
    /// Words the ratio asks for (at least 1).
    pub target_words: usize,
    /// Words of the output.
    pub output_words: usize,
    /// Output words over input words.
    pub achieved_ratio: f64,
    /// The compressor's session in the store.
    pub session: SessionId,
    /// What the call spent (unknown tokens or cost counted, never zero).
    pub usage: SessionUsage,
}

/// Compresses `prompt` to `ratio` of its words with the `compressor` profile's model, run
/// through `ctx` (its store, models, budget and prices).
///
/// # Errors
/// [`ImproveError::InvalidConfig`] for a ratio outside `(0, 1)` or an empty prompt;
/// [`ImproveError::CompressionFailed`] when the loop stops without an answer or the model
/// reasons aloud (a `<think>` block: compression takes a non-reasoning model);
/// [`ImproveError::DegenerateCompression`] when the output is under [`COMPRESSION_FLOOR`] of
/// the target word count; the model's, loop's and store's errors.
pub async fn compress_prompt(
    compressor: &AgentProfile,
    prompt: &str,
    ratio: f64,
    ctx: &RolloutContext,
) -> Result<Compression, ImproveError> {
    if !(ratio.is_finite() && ratio > 0.0 && ratio < 1.0) {
        return Err(ImproveError::InvalidConfig(format!(
            "ratio = {ratio}: expected a number strictly between 0 and 1 (output words over \
             input words)"
        )));
    }
    let input_words = words(prompt);
    if input_words == 0 {
        return Err(ImproveError::InvalidConfig(
            "the prompt to compress is empty".into(),
        ));
    }
    let target_words = ((input_words as f64 * ratio).round() as usize).max(1);
    let instruction = instruction(prompt, input_words, target_words, ratio);
    // Temperature 0 and one turn: the fixed model answers once, the same way for the same input.
    let outcome = ctx
        .tool_loop(compressor)?
        .temperature(0.0)
        .max_turns(1)
        .user(instruction.clone())
        .run()
        .await?;
    let session = outcome.session_id;
    let failed = |reason: String| ImproveError::CompressionFailed {
        session: session.to_string(),
        reason,
    };
    let answer = match (&outcome.stop, &outcome.answer) {
        (StopReason::Answered, Some(answer)) => answer.clone(),
        (stop, _) => return Err(failed(format!("the compressor gave no answer: {stop}"))),
    };
    if answer.contains("<think>") {
        return Err(failed(
            "the compressor reasoned aloud (a <think> block): compression takes a \
             non-reasoning model"
                .into(),
        ));
    }
    let messages = sent_messages(ctx, &session).await?;
    let output = extract_text(&answer);
    let output_words = words(&output);
    let compression = Compression {
        model: compressor.model.default.clone(),
        profile: compressor.content_address().to_string(),
        ratio,
        input: prompt.to_owned(),
        instruction,
        messages,
        answer,
        output,
        input_words,
        target_words,
        output_words,
        achieved_ratio: output_words as f64 / input_words as f64,
        session,
        usage: outcome.run_usage,
    };
    if (output_words as f64) < COMPRESSION_FLOOR * target_words as f64 {
        return Err(ImproveError::DegenerateCompression {
            output_words,
            target_words,
            floor_words: (COMPRESSION_FLOOR * target_words as f64).ceil() as usize,
            session: session.to_string(),
            attempt: Box::new(compression),
        });
    }
    Ok(compression)
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// The compressor's user message: what to do, then the prompt between markers.
fn instruction(prompt: &str, input_words: usize, target_words: usize, ratio: f64) -> String {
    format!(
        "Compress the prompt between the markers to about {target_words} words ({:.0}% of its \
         {input_words} words). Keep every instruction, constraint, fact, name and number it \
         states; drop repetition and filler. Write it as a prompt in the same voice, not as a \
         description of it. Reply with the compressed prompt only.\n\n<<<PROMPT\n{prompt}\nPROMPT>>>",
        ratio * 100.0
    )
}

/// The messages the session started with, as recorded: exactly what the model was sent.
async fn sent_messages(
    ctx: &RolloutContext,
    session: &SessionId,
) -> Result<Vec<Message>, ImproveError> {
    let mut events = ctx.store().replay(session, 0);
    while let Some(event) = events.try_next().await? {
        if let Ok(RuntimeEvent::SessionStarted { messages, .. }) = event.payload.parse() {
            return Ok(messages);
        }
    }
    Err(ImproveError::CompressionFailed {
        session: session.to_string(),
        reason: "its session has no start event to read the prompts from".into(),
    })
}
