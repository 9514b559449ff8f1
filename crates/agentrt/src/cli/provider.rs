//! The chat model a profile names, reached over HTTP: shared by `agentrt run` and `agentrt serve`.

use std::sync::Arc;

use agentrt::core_loop::model::{Anthropic, ChatModel, OpenAiCompatible};
use agentrt::profiles::AgentProfile;
use anyhow::{Result, anyhow, bail};

/// The providers the CLI can reach, by the profile's `model.provider`.
const PROVIDERS: &str = "openai, openai-compatible, openrouter, vllm, llama.cpp, ollama, anthropic";

/// A value from the environment, if set and not blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The chat model a profile names, reached over HTTP. Keys come from the environment only
/// (`OPENAI_API_KEY`, `OPENROUTER_API_KEY`, `ANTHROPIC_API_KEY`), never from profile files.
pub(super) fn model_for(
    profile: &AgentProfile,
    base_url: Option<String>,
) -> Result<Arc<dyn ChatModel>> {
    let provider = profile.model.provider.as_str();
    let base_url = base_url.or_else(|| profile.model.base_url.clone());
    let model: Arc<dyn ChatModel> = match provider {
        "anthropic" => {
            let key = env("ANTHROPIC_API_KEY")
                .ok_or_else(|| anyhow!("provider `anthropic` needs ANTHROPIC_API_KEY"))?;
            let mut builder = Anthropic::builder().api_key(key);
            if let Some(url) = base_url {
                builder = builder.base_url(url);
            }
            Arc::new(builder.build()?)
        }
        "openai" | "openrouter" | "openai-compatible" | "vllm" | "llama.cpp" | "ollama" => {
            let (default_url, key_var) = match provider {
                "openai" => (Some("https://api.openai.com/v1"), "OPENAI_API_KEY"),
                "openrouter" => (Some("https://openrouter.ai/api/v1"), "OPENROUTER_API_KEY"),
                _ => (None, "OPENAI_API_KEY"),
            };
            let url = base_url
                .or_else(|| env("OPENAI_BASE_URL"))
                .or_else(|| default_url.map(str::to_owned))
                .ok_or_else(|| {
                    anyhow!(
                        "provider `{provider}` needs a base URL: set model.base_url in the \
                         profile, pass --base-url, or set AGENTRT_BASE_URL or OPENAI_BASE_URL"
                    )
                })?;
            let mut builder = OpenAiCompatible::builder(url).provider_name(provider);
            match env(key_var) {
                Some(key) => builder = builder.api_key(key),
                // A hosted provider without a key would only fail later with a 401.
                None if default_url.is_some() => bail!("provider `{provider}` needs {key_var}"),
                None => {}
            }
            Arc::new(builder.build()?)
        }
        other => bail!(
            "profile `{}`: provider `{other}` cannot be run from the command line \
             (model.provider: one of {PROVIDERS})",
            profile.name
        ),
    };
    Ok(model)
}
