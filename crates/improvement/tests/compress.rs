//! `compress_prompt` with a scripted model through the one model stack: a compression keeps the
//! exact prompts it sent, a degenerate one fails loud, a reasoning model is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentrt_core_loop::model::{Message, ModelOptions, ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{Budget, BudgetLimits};
use agentrt_improvement::{
    COMPRESSION_FLOOR, Compression, ImproveError, RolloutContext, compress_prompt,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{MemoryStore, SessionStore};

/// A prompt of 40 words.
const PROMPT: &str = "You are a support agent for a bicycle shop. Greet the customer by \
    name, answer questions about repairs and prices, never promise delivery dates, and when \
    you do not know an answer say so and offer to ask a colleague.";

fn compressor() -> AgentProfile {
    AgentProfile::from_toml_str(
        "name = \"compressor\"\nharness = \"router\"\nsystem_prompt = \"You shorten prompts.\"\n\
         [model]\nprovider = \"openai-compatible\"\ndefault = \"small-instruct\"\n\
         base_url = \"http://127.0.0.1:9\"\n",
    )
    .unwrap()
}

/// The compressor answering `reply` through `model_from_profile`'s stack (the scripted client
/// in place of the provider's).
fn context(reply: &str) -> (ScriptedModel, RolloutContext) {
    let model = ScriptedModel::new([ScriptedTurn::text(reply.to_owned()).with_usage(120, 30)]);
    let models = ProfileModels::new(ModelOptions::new().scripted(model.clone()));
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let ctx = RolloutContext::new(
        store,
        models,
        Budget::new(BudgetLimits::unlimited().tokens(10_000)).unwrap(),
    );
    (model, ctx)
}

#[tokio::test]
async fn a_compression_keeps_the_exact_prompts_it_sent_and_its_counts() {
    let reply = "```\nSupport agent, bicycle shop: greet customers by name, answer repair and \
                 price questions, never promise delivery dates, admit unknowns and offer a colleague.\n```";
    let (model, ctx) = context(reply);
    let compression = compress_prompt(&compressor(), PROMPT, 0.5, &ctx)
        .await
        .expect("compresses");

    assert_eq!(compression.input, PROMPT);
    assert_eq!(compression.input_words, 40);
    assert_eq!(compression.target_words, 20);
    assert!(
        compression
            .output
            .starts_with("Support agent, bicycle shop")
    );
    assert_eq!(compression.output_words, 23);
    assert!((compression.achieved_ratio - 23.0 / 40.0).abs() < 1e-9);
    assert_eq!(compression.answer, reply);
    assert_eq!(compression.model, "small-instruct");
    assert_eq!(compression.usage.input_tokens, 120);

    // The artifact's prompts are what the model got: the profile's system prompt and the
    // instruction carrying the whole input, read back from the recorded session.
    let request = &model.requests()[0];
    assert_eq!(compression.messages, request.messages);
    assert_eq!(
        compression.messages[0],
        Message::System {
            content: "You shorten prompts.".into()
        }
    );
    assert_eq!(
        compression.messages[1],
        Message::User {
            content: compression.instruction.clone()
        }
    );
    assert!(compression.instruction.contains(PROMPT));
    assert!(compression.instruction.contains("about 20 words"));
    // The fixed model answers at temperature 0.
    assert_eq!(request.temperature, Some(0.0));
    ctx.store().get(&compression.session).await.unwrap();

    // The artifact round-trips as JSON with every prompt in it.
    let json = serde_json::to_value(&compression).unwrap();
    for field in ["input", "instruction", "messages", "answer", "output"] {
        assert!(json.get(field).is_some(), "{field}");
    }
    let back: Compression = serde_json::from_value(json).unwrap();
    assert_eq!(back, compression);
}

#[tokio::test]
async fn an_output_under_a_fifth_of_the_target_fails_loud_with_the_attempt() {
    // Target 20 words, floor 4: three words are a different treatment, not a compression.
    let (_, ctx) = context("Help bicycle customers.");
    let error = compress_prompt(&compressor(), PROMPT, 0.5, &ctx)
        .await
        .unwrap_err();
    match &error {
        ImproveError::DegenerateCompression {
            output_words,
            target_words,
            floor_words,
            attempt,
            ..
        } => {
            assert_eq!((*output_words, *target_words, *floor_words), (3, 20, 4));
            assert!((*output_words as f64) < COMPRESSION_FLOOR * *target_words as f64);
            assert_eq!(attempt.output, "Help bicycle customers.");
            assert_eq!(attempt.input, PROMPT);
            assert!(attempt.instruction.contains(PROMPT));
        }
        other => panic!("expected DegenerateCompression, got {other:?}"),
    }
    assert!(
        error.to_string().contains("degenerate compression"),
        "{error}"
    );

    // Exactly at the floor is a compression.
    let (_, ctx) = context("Greet, answer, never promise dates.");
    let ok = compress_prompt(&compressor(), PROMPT, 0.5, &ctx)
        .await
        .unwrap();
    assert_eq!(ok.output_words, 5);
}

#[tokio::test]
async fn a_reasoning_reply_and_a_bad_ratio_are_refused() {
    let (_, ctx) =
        context("<think>The user wants fewer words.</think>Support agent: greet, answer.");
    let error = compress_prompt(&compressor(), PROMPT, 0.5, &ctx)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ImproveError::CompressionFailed { reason, .. } if reason.contains("non-reasoning")),
        "{error}"
    );
    for ratio in [0.0, 1.0, 1.5, f64::NAN] {
        let (model, ctx) = context("unused");
        let error = compress_prompt(&compressor(), PROMPT, ratio, &ctx)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ImproveError::InvalidConfig(m) if m.contains("ratio")),
            "{ratio}: {error}"
        );
        assert_eq!(model.calls(), 0, "nothing is sent for a bad ratio");
    }
}
