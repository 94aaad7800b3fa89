//! The agent catalogue: the roles a user can put on a team, read from a TOML file.
//! Both the api (to validate and snapshot a team) and the worker read it.

use std::path::Path;

use serde::Deserialize;

use crate::task::AgentDef;

const DEFAULT_CATALOGUE: &str = include_str!("../agents.toml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("cannot read agent catalogue {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("agent catalogue {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Catalogue {
    agents: Vec<AgentDef>,
}

#[derive(Deserialize)]
struct CatalogueFile {
    agents: Vec<AgentDef>,
}

impl Catalogue {
    /// The catalogue that ships with Troupe.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_CATALOGUE, "<builtin>").expect("the builtin catalogue is valid")
    }

    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: display.clone(),
            source,
        })?;
        Self::parse(&text, &display)
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, CatalogueError> {
        let invalid = |message: String| CatalogueError::Invalid {
            path: path.to_string(),
            message,
        };
        let file: CatalogueFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.agents.is_empty() {
            return Err(invalid("it lists no agents".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for agent in &file.agents {
            let valid_role = !agent.role.is_empty()
                && agent.role.len() <= 64
                && agent
                    .role
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_role {
                return Err(invalid(format!(
                    "role {:?} must be 1-64 characters of a-z, 0-9, '-' or '_'",
                    agent.role
                )));
            }
            if !seen.insert(agent.role.as_str()) {
                return Err(invalid(format!("role {:?} is listed twice", agent.role)));
            }
        }
        Ok(Catalogue {
            agents: file.agents,
        })
    }

    pub fn agents(&self) -> &[AgentDef] {
        &self.agents
    }

    pub fn get(&self, role: &str) -> Option<&AgentDef> {
        self.agents.iter().find(|a| a.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_has_the_promised_roles() {
        let catalogue = Catalogue::builtin();
        assert!(catalogue.agents().len() >= 6);
        assert!(catalogue.get("tech-lead").is_some());
        assert!(catalogue.get("frontend").is_some());
    }

    #[test]
    fn rejects_duplicate_and_malformed_roles() {
        let dup = "[[agents]]\nrole='a'\nname='A'\ndescription=''\n[[agents]]\nrole='a'\nname='B'\ndescription=''\n";
        assert!(matches!(
            Catalogue::parse(dup, "x"),
            Err(CatalogueError::Invalid { .. })
        ));
        let bad = "[[agents]]\nrole='A B'\nname='A'\ndescription=''\n";
        assert!(Catalogue::parse(bad, "x").is_err());
        assert!(Catalogue::parse("agents = []", "x").is_err());
    }
}
