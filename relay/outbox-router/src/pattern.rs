//! Event-type patterns: exact names, `prefix.*` and `*`.

use std::fmt;
use std::str::FromStr;

use outbox_core::ValidationError;

/// Which event types a route takes.
///
/// - `file.stored` matches that type only;
/// - `file.*` matches every type under `file.` (`file.stored`, `file.stored.thumb`), not `file`;
/// - `*` matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// One event type.
    Exact(String),
    /// Every type starting with this prefix and a dot.
    Prefix(String),
    /// Every type.
    Any,
}

impl Pattern {
    /// Parses a pattern, refusing wildcards anywhere but at the end after a dot.
    pub fn parse(pattern: &str) -> Result<Self, ValidationError> {
        let bad = |why: &str| ValidationError::new("pattern", format!("{pattern:?}: {why}"));
        if pattern == "*" {
            return Ok(Pattern::Any);
        }
        if pattern.is_empty() {
            return Err(bad("is empty"));
        }
        let (body, prefix) = match pattern.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        if body.is_empty() || body.contains('*') {
            return Err(bad(
                "a wildcard may only end a pattern, after a dot (file.*)",
            ));
        }
        if body.split('.').any(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        }) {
            return Err(bad("segments use lowercase letters, digits, '_' and '-'"));
        }
        Ok(if prefix {
            Pattern::Prefix(body.to_owned())
        } else {
            Pattern::Exact(body.to_owned())
        })
    }

    /// Whether `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == event_type,
            Pattern::Prefix(p) => event_type
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
            Pattern::Any => true,
        }
    }
}

impl FromStr for Pattern {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(t) => f.write_str(t),
            Pattern::Prefix(p) => write!(f, "{p}.*"),
            Pattern::Any => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("file.stored").matches("file.stored"));
        assert!(!p("file.stored").matches("file.stored.thumb"));
        assert!(p("file.*").matches("file.stored") && p("file.*").matches("file.stored.thumb"));
        assert!(!p("file.*").matches("file") && !p("file.*").matches("files.stored"));
        assert!(p("*").matches("anything.at.all"));
        for bad in ["", "file*", "*.stored", "file.*.x", "File.*", "a..b"] {
            assert_eq!(Pattern::parse(bad).unwrap_err().field(), "pattern", "{bad}");
        }
        assert_eq!(p("file.*").to_string(), "file.*");
    }
}
