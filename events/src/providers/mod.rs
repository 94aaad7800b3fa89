//! What the api and the workers both know about LLM providers, without a key between them:
//! their names and labels, the options each takes and how a submit's are checked, and
//! which providers the live workers serve, as each worker advertises in the store.
//!
//! The api learns what it may accept from those adverts alone: it holds no provider key
//! and links no provider client.

mod advert;
pub mod options;
pub mod simulated;

pub use advert::{Advertiser, LiveDirectory};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Provider names this build knows, in the catalogue's order.
pub const NAMES: [&str; 3] = ["openai", "anthropic", "simulated"];

/// How the catalogue shows `name`.
fn label(name: &str) -> &'static str {
    match name {
        "openai" => "OpenAI-compatible",
        "anthropic" => "Anthropic",
        _ => "Simulated (offline)",
    }
}

fn is_simulated(name: &str) -> bool {
    name == "simulated"
}

/// One provider a worker can call: its name and the model a task naming none gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    pub name: String,
    pub default_model: Option<String>,
}

/// What one worker process serves, said again while it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub worker_id: Uuid,
    pub offers: Vec<Offer>,
    /// The worker is shutting down: its advert counts only while no other worker runs,
    /// so that a restart does not turn submits away in the moment no worker is up.
    pub stopping: bool,
}

/// One line of the provider catalogue, as the api serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderInfo {
    /// What a task's `provider` names: `openai`, `anthropic` or `simulated`.
    pub name: String,
    pub label: String,
    /// Calls no LLM: its answers are made up, and say so.
    pub simulated: bool,
    /// Every live worker serves it, so a task can run on it now.
    pub configured: bool,
    /// The model a task that names none gets; `None` when no live worker serves it.
    pub default_model: Option<String>,
}

/// The providers a task may run on: those every live worker serves, since whichever
/// worker takes a task from the shared queue must be able to call its provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    workers: usize,
    served: Vec<Offer>,
}

impl Directory {
    /// The directory `adverts` (live ones, newest first) make. Stopping workers count only
    /// when no other worker is live.
    pub fn of(adverts: &[Advert]) -> Directory {
        let running: Vec<&Advert> = adverts.iter().filter(|a| !a.stopping).collect();
        let basis = if running.is_empty() {
            adverts.iter().collect()
        } else {
            running
        };
        let offered = |advert: &Advert, name: &str| -> Option<Offer> {
            advert.offers.iter().find(|o| o.name == name).cloned()
        };
        let served = NAMES
            .iter()
            .filter(|name| !basis.is_empty() && basis.iter().all(|a| offered(a, name).is_some()))
            .filter_map(|name| basis.first().and_then(|newest| offered(newest, name)))
            .collect();
        Directory {
            workers: basis.len(),
            served,
        }
    }

    /// Live workers the directory was made from.
    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn serves(&self, name: &str) -> bool {
        self.served.iter().any(|o| o.name == name)
    }

    /// Every provider this build knows, served or not, so a client can say why one is
    /// unavailable.
    pub fn catalogue(&self) -> Vec<ProviderInfo> {
        NAMES
            .iter()
            .map(|&name| {
                let served = self.served.iter().find(|o| o.name == name);
                ProviderInfo {
                    name: name.into(),
                    label: label(name).into(),
                    simulated: is_simulated(name),
                    configured: served.is_some(),
                    default_model: served.and_then(|o| o.default_model.clone()),
                }
            })
            .collect()
    }

    /// The provider a task gets when it names none: a real one when one is served (it may
    /// be the simulated one turned off: a submit then says so).
    pub fn default_name(&self) -> &'static str {
        ["openai", "anthropic"]
            .into_iter()
            .find(|name| self.serves(name))
            .unwrap_or("simulated")
    }
}

/// What is wrong with a task's `providerOptions` for `provider`, said for the user: a
/// value the provider would refuse is refused at submit, before anything is stored. A
/// simulated answer may take at most `simulated_max_answer_ms`.
pub fn check_options(
    provider: &str,
    options: &Map<String, Value>,
    simulated_max_answer_ms: i64,
) -> Result<(), String> {
    if is_simulated(provider) {
        return simulated::check_options(options, simulated_max_answer_ms);
    }
    // The HTTP providers pass these two through to the model.
    options::number(options, "temperature").map_err(|e| e.0)?;
    options::positive_integer(options, "maxTokens").map_err(|e| e.0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn advert(offers: &[(&str, Option<&str>)], stopping: bool) -> Advert {
        Advert {
            worker_id: Uuid::new_v4(),
            offers: offers
                .iter()
                .map(|(name, model)| Offer {
                    name: name.to_string(),
                    default_model: model.map(str::to_string),
                })
                .collect(),
            stopping,
        }
    }

    fn configured(directory: &Directory) -> Vec<(String, bool)> {
        directory
            .catalogue()
            .into_iter()
            .map(|p| (p.name, p.configured))
            .collect()
    }

    #[test]
    fn no_live_worker_serves_nothing() {
        let directory = Directory::of(&[]);
        assert_eq!(directory.workers(), 0);
        assert!(NAMES.iter().all(|name| !directory.serves(name)));
        assert_eq!(directory.default_name(), "simulated");
    }

    #[test]
    fn only_what_every_live_worker_serves_is_served() {
        let directory = Directory::of(&[
            advert(&[("openai", Some("llama3.2")), ("simulated", None)], false),
            advert(
                &[
                    ("openai", Some("gpt-4o-mini")),
                    ("anthropic", Some("claude")),
                ],
                false,
            ),
        ]);
        assert_eq!(directory.workers(), 2);
        assert_eq!(
            configured(&directory),
            vec![
                ("openai".into(), true),
                ("anthropic".into(), false),
                ("simulated".into(), false)
            ]
        );
        // The newest advert's default model is shown.
        assert_eq!(
            directory.catalogue()[0].default_model.as_deref(),
            Some("llama3.2")
        );
        assert_eq!(directory.default_name(), "openai");
    }

    #[test]
    fn stopping_workers_count_only_when_no_other_is_live() {
        let stopping = advert(&[("simulated", None)], true);
        let alone = Directory::of(std::slice::from_ref(&stopping));
        assert!(alone.serves("simulated"));
        let replaced = Directory::of(&[advert(&[("anthropic", Some("c"))], false), stopping]);
        assert_eq!(replaced.workers(), 1);
        assert!(!replaced.serves("simulated"));
        assert_eq!(replaced.default_name(), "anthropic");
    }

    #[test]
    fn catalogue_serializes_in_camel_case() {
        let directory =
            Directory::of(&[advert(&[("anthropic", Some("claude-sonnet-4-5"))], false)]);
        let json = serde_json::to_value(directory.catalogue()).unwrap();
        assert_eq!(
            json[1],
            json!({
                "name": "anthropic",
                "label": "Anthropic",
                "simulated": false,
                "configured": true,
                "defaultModel": "claude-sonnet-4-5"
            })
        );
        assert_eq!(json[2]["simulated"], true);
        assert_eq!(json[2]["configured"], false);
    }

    #[test]
    fn options_the_http_providers_would_refuse_are_refused() {
        let check = |provider: &str, options: Value| {
            check_options(
                provider,
                options.as_object().unwrap(),
                simulated::MAX_ANSWER_MS,
            )
        };
        assert!(check("openai", json!({"temperature": 0.2, "maxTokens": 100})).is_ok());
        assert!(
            check("anthropic", json!({"maxTokens": 0}))
                .unwrap_err()
                .contains("maxTokens")
        );
        assert!(
            check("openai", json!({"temperature": "hot"}))
                .unwrap_err()
                .contains("temperature")
        );
        assert!(check("simulated", json!({"tokens": 0})).is_err());
    }
}
