//! The one way a profile's model section becomes a model: the provider's HTTP client, always
//! wrapped in the middleware stack ([`ModelStack`]) with the profile's settings, the caller's
//! overrides and documented defaults. Every front door (the CLI, supervision's workers and
//! brain, the examples) builds its models here, so none of them talks to a provider bare.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentrt_profiles::{AgentProfile, ContentAddress, ModelSpec, StackSettings};

use super::http::Secret;
use super::{
    Anthropic, ChatModel, ModelStack, OpenAiCompatible, RetryPolicy, ScriptedModel, UsageMeter,
};
use crate::LoopError;

/// Providers [`model_from_profile`] can reach, by `model.provider`.
pub const PROVIDERS: [&str; 7] = [
    "openai",
    "openai-compatible",
    "openrouter",
    "vllm",
    "llama.cpp",
    "ollama",
    "anthropic",
];

/// Default connect timeout when neither the profile nor the caller sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to first byte (status and headers), per attempt.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default longest gap between two chunks of a streamed response.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default attempts per call, the first included ([`RetryPolicy`]'s default).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;
/// Default number of calls streaming at once through one built model.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 32;

/// The stack settings in force: every field resolved, from the caller's overrides, then the
/// profile's `[model.stack]`, then the defaults above. Recorded so a run can say what it ran
/// with.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedStack {
    /// Connection establishment limit.
    pub connect_timeout: Duration,
    /// Time to first byte, per attempt.
    pub first_byte_timeout: Duration,
    /// Longest gap between stream chunks.
    pub idle_timeout: Duration,
    /// The retry policy (attempts from the settings, backoff as [`RetryPolicy::default`]).
    pub retry: RetryPolicy,
    /// Calls streaming at once.
    pub max_concurrency: u32,
    /// Attempts started per minute, if limited.
    pub requests_per_minute: Option<u32>,
}

impl ResolvedStack {
    /// Resolves `settings` against the defaults.
    pub fn from_settings(settings: StackSettings) -> Self {
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        ResolvedStack {
            connect_timeout: ms(settings.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT),
            first_byte_timeout: ms(settings.first_byte_timeout_ms, DEFAULT_FIRST_BYTE_TIMEOUT),
            idle_timeout: ms(settings.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT),
            retry: RetryPolicy {
                max_attempts: settings.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
                ..RetryPolicy::default()
            },
            max_concurrency: settings
                .max_concurrency
                .unwrap_or(DEFAULT_MAX_CONCURRENCY)
                .max(1),
            requests_per_minute: settings.requests_per_minute,
        }
    }
}

/// Everything a model needs that is not in the profile: where to reach it and with which key,
/// the caller's overrides of the stack settings, and an optional usage meter.
///
/// Keys come from here only (the environment, through [`ModelOptions::from_env`]), never from
/// profile files. `Debug` shows which keys are set, never their values.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    base_url: Option<String>,
    default_base_url: Option<String>,
    keys: BTreeMap<&'static str, Secret>,
    stack: StackSettings,
    meter: Option<UsageMeter>,
    retry: Option<RetryPolicy>,
    scripted: Option<ScriptedModel>,
}

/// The environment variables [`ModelOptions::from_env`] reads keys from.
const KEY_VARS: [&str; 3] = ["OPENAI_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY"];

impl ModelOptions {
    /// No base URL override, no keys, no stack overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options from the process environment: the keys `OPENAI_API_KEY`, `OPENROUTER_API_KEY`
    /// and `ANTHROPIC_API_KEY`, and `OPENAI_BASE_URL` as the base URL of self-hosted
    /// OpenAI-compatible providers whose profile names none. Blank values count as unset.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Options from a variable lookup (as [`from_env`](Self::from_env), for tests and
    /// embedders that keep configuration elsewhere).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut options = Self::new();
        for var in KEY_VARS {
            if let Some(key) = get(var) {
                options.keys.insert(var, Secret(key));
            }
        }
        options.default_base_url = get("OPENAI_BASE_URL");
        options
    }

    /// The provider's base URL, overriding the profile's `model.base_url` (e.g. a CLI flag).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the API key for `provider`'s key variable (`OPENAI_API_KEY` for OpenAI and
    /// self-hosted servers, `OPENROUTER_API_KEY`, `ANTHROPIC_API_KEY`).
    pub fn api_key(mut self, provider: &str, key: impl Into<String>) -> Self {
        self.keys.insert(key_var(provider), Secret(key.into()));
        self
    }

    /// Stack settings that override the profile's (only the fields set here).
    pub fn stack_overrides(mut self, overrides: StackSettings) -> Self {
        self.stack = self.stack.overridden_by(overrides);
        self
    }

    /// Answers every call from this script instead of the profile's provider (offline runs:
    /// `agentrt run --scripted FILE`), through the same stack; the profile's model id and its
    /// allowed-models guard still apply, and the provider is recorded as `scripted`.
    pub fn scripted(mut self, model: ScriptedModel) -> Self {
        self.scripted = Some(model);
        self
    }

    /// Records every call's usage into `meter`.
    pub fn meter(mut self, meter: UsageMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Uses this retry policy's backoff (its `max_attempts` still comes from the settings).
    pub fn retry_backoff(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The stack settings in force for `spec`: these options' overrides over the profile's.
    pub fn resolve(&self, spec: &ModelSpec) -> ResolvedStack {
        let mut resolved = ResolvedStack::from_settings(spec.stack.overridden_by(self.stack));
        if let Some(policy) = &self.retry {
            resolved.retry = RetryPolicy {
                max_attempts: resolved.retry.max_attempts,
                ..policy.clone()
            };
        }
        resolved
    }
}

fn key_var(provider: &str) -> &'static str {
    match provider {
        "anthropic" => "ANTHROPIC_API_KEY",
        "openrouter" => "OPENROUTER_API_KEY",
        _ => "OPENAI_API_KEY",
    }
}

/// Builds the model `profile`'s model section names, reached over HTTP and wrapped in the
/// middleware stack: connect timeout (on the HTTP client), time-to-first-byte timeout per
/// attempt, idle timeout between stream chunks, retry with backoff honouring `Retry-After`
/// (only before any output reached the caller), a concurrency limit, an optional rate limit,
/// the usage meter when [`ModelOptions::meter`] is set, tracing, and — when `model.tool_calls`
/// is `structured` — the [`StructuredToolCallsLayer`](super::StructuredToolCallsLayer). Settings come from
/// `options`' overrides, then the profile's `[model.stack]`, then the `DEFAULT_*` constants of
/// this module; [`ModelOptions::resolve`] shows the result.
///
/// The base URL is `options`' override, else `model.base_url`, else (self-hosted
/// OpenAI-compatible providers) `OPENAI_BASE_URL` from the options, else the hosted
/// provider's own (`openai`, `openrouter`, `anthropic`).
///
/// # Errors
/// [`LoopError::InvalidModelConfig`] naming the profile and field when the provider is not one of
/// [`PROVIDERS`], a self-hosted provider has no base URL, a hosted one has no key, or the base
/// URL is not an `http(s)` URL.
pub fn model_from_profile(
    profile: &AgentProfile,
    options: &ModelOptions,
) -> Result<Arc<dyn ChatModel>, LoopError> {
    let spec = &profile.model;
    let settings = options.resolve(spec);
    let client = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .build()
        .map_err(|e| LoopError::InvalidModelConfig(format!("HTTP client: {e}")))?;
    let provider = spec.provider.as_str();
    let context =
        |what: String| LoopError::InvalidModelConfig(format!("profile `{}`: {what}", profile.name));
    let base_url = options.base_url.clone().or_else(|| spec.base_url.clone());
    let key = options.keys.get(key_var(provider)).map(|s| s.0.clone());
    let raw: Arc<dyn ChatModel> = match (&options.scripted, provider) {
        (Some(script), _) => Arc::new(script.clone()),
        (None, "anthropic") => {
            let own_endpoint = base_url.is_none();
            let mut builder = Anthropic::builder().client(client);
            if let Some(url) = base_url {
                builder = builder.base_url(url);
            }
            match key {
                Some(key) => builder = builder.api_key(key),
                // A self-hosted Messages server (llama.cpp) needs no key; Anthropic's does.
                None if own_endpoint => {
                    return Err(context(
                        "model.provider `anthropic` needs ANTHROPIC_API_KEY".into(),
                    ));
                }
                None => {}
            }
            Arc::new(builder.build().map_err(|e| context(e.to_string()))?)
        }
        (None, "openai" | "openrouter" | "openai-compatible" | "vllm" | "llama.cpp" | "ollama") => {
            let hosted = match provider {
                "openai" => Some("https://api.openai.com/v1"),
                "openrouter" => Some("https://openrouter.ai/api/v1"),
                _ => None,
            };
            // OPENAI_BASE_URL points OpenAI's own clients elsewhere too (a proxy, a local
            // server); OpenRouter's endpoint is its own.
            let given = base_url.or_else(|| {
                (provider != "openrouter")
                    .then(|| options.default_base_url.clone())
                    .flatten()
            });
            let own_endpoint = given.is_none();
            let url = given.or_else(|| hosted.map(str::to_owned)).ok_or_else(|| {
                context(format!(
                    "model.provider `{provider}` needs a base URL: set model.base_url, \
                         pass one (--base-url), or set OPENAI_BASE_URL"
                ))
            })?;
            let mut builder = OpenAiCompatible::builder(url)
                .provider_name(provider)
                .client(client);
            // A key is demanded only by a provider's own hosted endpoint; a URL given by the
            // profile or the caller may be a local server or a proxy that needs none.
            match key {
                Some(key) => builder = builder.api_key(key),
                None if hosted.is_some() && own_endpoint => {
                    return Err(context(format!(
                        "model.provider `{provider}` needs {}",
                        key_var(provider)
                    )));
                }
                None => {}
            }
            Arc::new(builder.build().map_err(|e| context(e.to_string()))?)
        }
        (None, other) => {
            return Err(context(format!(
                "model.provider `{other}` cannot be reached (one of {})",
                PROVIDERS.join(", ")
            )));
        }
    };
    Ok(Arc::new(
        stack_for(raw, &settings, options.meter.clone())
            .tool_calls(spec.tool_calls)
            .build(),
    ))
}

/// Builds (and keeps) one model per distinct profile: what runs many profiles — a supervisor's
/// workers, an evaluation — resolves each profile's model here, so the same profile gets the
/// same model (and shares its concurrency and rate limits) however many workers run it.
///
/// [`ProfileModels::new`] builds through [`model_from_profile`]; [`ProfileModels::from_fn`]
/// takes a caller's builder (scripted models for tests and offline demos), whose models are used
/// as returned.
#[derive(Clone)]
pub struct ProfileModels {
    build: Arc<BuildFn>,
    cache: Arc<Mutex<HashMap<ContentAddress, Arc<dyn ChatModel>>>>,
}

type BuildFn = dyn Fn(&AgentProfile) -> Result<Arc<dyn ChatModel>, LoopError> + Send + Sync;

impl std::fmt::Debug for ProfileModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.cache.lock().map_or(0, |cache| cache.len());
        f.debug_struct("ProfileModels")
            .field("built", &built)
            .finish_non_exhaustive()
    }
}

impl ProfileModels {
    /// Models built by [`model_from_profile`] with `options`.
    pub fn new(options: ModelOptions) -> Self {
        Self::from_fn(move |profile| model_from_profile(profile, &options))
    }

    /// Models built by `build`, once per distinct profile (by content address).
    pub fn from_fn(
        build: impl Fn(&AgentProfile) -> Result<Arc<dyn ChatModel>, LoopError> + Send + Sync + 'static,
    ) -> Self {
        ProfileModels {
            build: Arc::new(build),
            cache: Arc::default(),
        }
    }

    /// The model `profile` runs on.
    ///
    /// # Errors
    /// What the builder returns for it (see [`model_from_profile`]).
    pub fn model_for(&self, profile: &AgentProfile) -> Result<Arc<dyn ChatModel>, LoopError> {
        let key = profile.content_address();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(model) = cache.get(&key) {
            return Ok(model.clone());
        }
        let model = (self.build)(profile)?;
        cache.insert(key, model.clone());
        Ok(model)
    }
}

/// The stack [`model_from_profile`] puts around a provider client, for a model built by hand
/// (a scripted model in an offline example, say) that should behave like a profile's.
pub fn stack_for(
    model: Arc<dyn ChatModel>,
    settings: &ResolvedStack,
    meter: Option<UsageMeter>,
) -> ModelStack {
    let mut stack = ModelStack::from_arc(model)
        .timeout(settings.first_byte_timeout)
        .idle_timeout(settings.idle_timeout)
        .retry(settings.retry.clone())
        .concurrency_limit(settings.max_concurrency as usize);
    if let Some(per_minute) = settings.requests_per_minute {
        stack = stack.rate_limit(u64::from(per_minute), Duration::from_secs(60));
    }
    if let Some(meter) = meter {
        stack = stack.meter(meter);
    }
    stack
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn profile(model: &str) -> AgentProfile {
        AgentProfile::from_toml_str(&format!(
            "name = \"p\"\nharness = \"router\"\n[model]\n{model}"
        ))
        .unwrap()
    }

    fn err(profile: &AgentProfile, options: &ModelOptions) -> String {
        match model_from_profile(profile, options) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn settings_resolve_overrides_then_profile_then_defaults() {
        let p = profile(
            "provider = \"llama.cpp\"\ndefault = \"m\"\n[model.stack]\nidle_timeout_ms = 7\nmax_attempts = 2",
        );
        let options = ModelOptions::new().stack_overrides(StackSettings {
            max_attempts: Some(1),
            ..StackSettings::default()
        });
        let resolved = options.resolve(&p.model);
        assert_eq!(resolved.idle_timeout, Duration::from_millis(7));
        assert_eq!(resolved.retry.max_attempts, 1, "the override wins");
        assert_eq!(resolved.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(resolved.first_byte_timeout, DEFAULT_FIRST_BYTE_TIMEOUT);
        assert_eq!(resolved.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(resolved.requests_per_minute, None);
    }

    #[test]
    fn errors_name_the_profile_and_the_field() {
        let unknown = profile("provider = \"carrier-pigeon\"\ndefault = \"m\"");
        let text = err(&unknown, &ModelOptions::new());
        assert!(
            text.contains("profile `p`") && text.contains("carrier-pigeon"),
            "{text}"
        );
        assert!(text.contains("anthropic"), "lists the providers: {text}");

        let no_url = profile("provider = \"vllm\"\ndefault = \"m\"");
        assert!(err(&no_url, &ModelOptions::new()).contains("needs a base URL"));

        let hosted = profile("provider = \"openai\"\ndefault = \"gpt\"");
        assert!(err(&hosted, &ModelOptions::new()).contains("OPENAI_API_KEY"));
        let anthropic = profile("provider = \"anthropic\"\ndefault = \"claude\"");
        assert!(err(&anthropic, &ModelOptions::new()).contains("ANTHROPIC_API_KEY"));

        let bad_url = profile("provider = \"vllm\"\ndefault = \"m\"");
        let text = err(&bad_url, &ModelOptions::new().base_url("ftp://x"));
        assert!(text.contains("http"), "{text}");
    }

    #[test]
    fn keys_and_base_urls_come_from_the_variables_given() {
        let vars = |name: &str| match name {
            "OPENAI_BASE_URL" => Some("http://127.0.0.1:1/v1".to_owned()),
            "OPENAI_API_KEY" => Some("sk-test".to_owned()),
            "ANTHROPIC_API_KEY" => Some("  ".to_owned()),
            _ => None,
        };
        let options = ModelOptions::from_vars(vars);
        let debug = format!("{options:?}");
        assert!(!debug.contains("sk-test"), "keys are redacted: {debug}");
        let local = profile("provider = \"llama.cpp\"\ndefault = \"m\"");
        let model = model_from_profile(&local, &options).unwrap();
        assert_eq!(model.provider(), "llama.cpp");
        let hosted = profile("provider = \"openai\"\ndefault = \"gpt\"");
        assert!(
            model_from_profile(&hosted, &options).is_ok(),
            "the key was given"
        );
        let anthropic = profile("provider = \"anthropic\"\ndefault = \"claude\"");
        assert!(
            err(&anthropic, &options).contains("ANTHROPIC_API_KEY"),
            "a blank key is no key"
        );
    }
}
