//! Destination templates: `events.{event_type}` and the like.

use outbox_core::{OutboxEvent, ValidationError};

/// A destination with placeholders filled from each event: `{event_type}`, `{aggregate_type}`,
/// `{aggregate_id}`, `{id}`.
///
/// ```
/// use outbox_router::Template;
/// let t = Template::parse("events.{event_type}")?;
/// # let e = outbox_core::NewEvent::builder("file.stored", "upload", "7").build()?
/// #     .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3);
/// assert_eq!(t.render(&e), "events.file.stored");
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    EventType,
    AggregateType,
    AggregateId,
    Id,
}

impl Template {
    /// Parses a template; an unknown or unclosed placeholder is an error naming it.
    pub fn parse(template: &str) -> Result<Self, ValidationError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| {
                ValidationError::new("template", format!("{template:?}: unclosed '{{'"))
            })?;
            parts.push(match &after[..close] {
                "event_type" => Part::EventType,
                "aggregate_type" => Part::AggregateType,
                "aggregate_id" => Part::AggregateId,
                "id" => Part::Id,
                other => {
                    return Err(ValidationError::new(
                        "template",
                        format!("{template:?}: unknown placeholder {{{other}}}; use event_type, aggregate_type, aggregate_id or id"),
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The destination for `event`.
    pub fn render(&self, event: &OutboxEvent) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::EventType => out.push_str(&event.event_type),
                Part::AggregateType => out.push_str(&event.aggregate_type),
                Part::AggregateId => out.push_str(&event.aggregate_id),
                Part::Id => out.push_str(&event.id.to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{EventId, NewEvent};

    #[test]
    fn renders_placeholders_and_refuses_unknown_ones() {
        let e = NewEvent::builder("order.paid", "order", "o-9")
            .build()
            .unwrap()
            .into_event(EventId::new(), chrono::Utc::now(), 3);
        let t = Template::parse("{aggregate_type}/{aggregate_id}:{event_type}!").unwrap();
        assert_eq!(t.render(&e), "order/o-9:order.paid!");
        assert_eq!(Template::parse("plain").unwrap().render(&e), "plain");
        assert_eq!(Template::parse("x.{nope}").unwrap_err().field(), "template");
        assert_eq!(
            Template::parse("x.{event_type").unwrap_err().field(),
            "template"
        );
    }
}
