//! Destination templates: `events.{event_type}` and the like.

use outbox_core::{OutboxEvent, ValidationError};

/// The destination syntax a template renders into, which decides how placeholder values are
/// escaped, so that a value can never reach another destination than the one its template
/// names (an aggregate id `x.other` must not land on subject `events.x.other`).
///
/// Characters a syntax reserves are written as `%XX` (the bytes of their UTF-8 form in upper
/// case hex), and so is `%` itself, which keeps the mapping one-to-one. `{event_type}` and
/// `{aggregate_type}` are names the application chose: they keep the syntax's hierarchy
/// separator (`file.stored` stays two subject tokens) and lose only wildcards, whitespace and
/// control characters. `{aggregate_id}` is data: its separators are escaped too.
///
/// | syntax | separator (kept in names) | always escaped |
/// |---|---|---|
/// | [`Plain`](Self::Plain) | — | nothing: values verbatim |
/// | [`NatsSubject`](Self::NatsSubject) | `.` | `*` `>` |
/// | [`AmqpRoutingKey`](Self::AmqpRoutingKey) | `.` | `*` `#` |
/// | [`RedisKey`](Self::RedisKey) | `:` | `{` `}` |
///
/// Every syntax but `Plain` also escapes `%`, whitespace and control characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Syntax {
    /// Values inserted as they are.
    #[default]
    Plain,
    /// A NATS subject: `.` separates tokens, `*` and `>` are wildcards.
    NatsSubject,
    /// An AMQP topic routing key: `.` separates words, `*` and `#` are wildcards in bindings.
    AmqpRoutingKey,
    /// A Redis key: `:` by convention separates a namespace, `{…}` picks a cluster hash slot.
    RedisKey,
}

impl Syntax {
    /// The hierarchy separator names may keep, and the characters escaped everywhere.
    fn rules(self) -> Option<(char, &'static [char])> {
        match self {
            Self::Plain => None,
            Self::NatsSubject => Some(('.', &['*', '>'])),
            Self::AmqpRoutingKey => Some(('.', &['*', '#'])),
            Self::RedisKey => Some((':', &['{', '}'])),
        }
    }

    /// Appends `value` to `out`, escaped for this syntax; `name` keeps the separator.
    fn push(self, out: &mut String, value: &str, name: bool) {
        let Some((separator, reserved)) = self.rules() else {
            out.push_str(value);
            return;
        };
        for c in value.chars() {
            let escape = c == '%'
                || c.is_whitespace()
                || c.is_control()
                || reserved.contains(&c)
                || (c == separator && !name);
            if escape {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            } else {
                out.push(c);
            }
        }
    }
}

/// A destination with placeholders filled from each event: `{event_type}`, `{aggregate_type}`,
/// `{aggregate_id}`, `{id}`, escaped for the destination's [`Syntax`].
///
/// ```
/// use outbox_router::{Syntax, Template};
/// let t = Template::parse("events.{event_type}")?;
/// # let e = outbox_core::NewEvent::builder("file.stored", "upload", "7").build()?
/// #     .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3);
/// assert_eq!(t.render(&e), "events.file.stored");
///
/// // Escaped for a NATS subject: the aggregate id stays one token.
/// let t = Template::parse("uploads.{aggregate_id}")?.syntax(Syntax::NatsSubject);
/// # let e = outbox_core::NewEvent::builder("file.stored", "upload", "7.other").build()?
/// #     .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3);
/// assert_eq!(t.render(&e), "uploads.7%2Eother");
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    syntax: Syntax,
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
        Ok(Self {
            parts,
            syntax: Syntax::Plain,
        })
    }

    /// Renders into `syntax`, escaping placeholder values for it (the default is
    /// [`Syntax::Plain`]: verbatim).
    #[must_use]
    pub fn syntax(mut self, syntax: Syntax) -> Self {
        self.syntax = syntax;
        self
    }

    /// The destination for `event`.
    pub fn render(&self, event: &OutboxEvent) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::EventType => self.syntax.push(&mut out, &event.event_type, true),
                Part::AggregateType => self.syntax.push(&mut out, &event.aggregate_type, true),
                Part::AggregateId => self.syntax.push(&mut out, &event.aggregate_id, false),
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

    fn event(event_type: &str, aggregate_type: &str, aggregate_id: &str) -> OutboxEvent {
        NewEvent::builder(event_type, aggregate_type, aggregate_id)
            .build()
            .unwrap()
            .into_event(EventId::new(), chrono::Utc::now(), 3)
    }

    /// A value can only fill its own placeholder: an aggregate id with a separator, a wildcard
    /// or a space stays one token of the destination, and two different ids never render alike.
    #[test]
    fn values_are_escaped_for_the_destination() {
        let nats = Template::parse("events.{event_type}.{aggregate_id}")
            .unwrap()
            .syntax(Syntax::NatsSubject);
        let e = event("file.stored", "upload", "x.other");
        assert_eq!(nats.render(&e), "events.file.stored.x%2Eother");
        let e = event("file.stored", "upload", "a >b*");
        assert_eq!(nats.render(&e), "events.file.stored.a%20%3Eb%2A");
        // '%' is escaped too, so "x%2Eother" and "x.other" stay apart.
        let e = event("t", "upload", "x%2Eother");
        assert_eq!(nats.render(&e), "events.t.x%252Eother");

        let amqp = Template::parse("{aggregate_type}.{aggregate_id}")
            .unwrap()
            .syntax(Syntax::AmqpRoutingKey);
        assert_eq!(amqp.render(&event("t", "order", "1.#")), "order.1%2E%23");

        let redis = Template::parse("events:{aggregate_id}")
            .unwrap()
            .syntax(Syntax::RedisKey);
        assert_eq!(
            redis.render(&event("t", "o", "a:{b}")),
            "events:a%3A%7Bb%7D"
        );
        assert_eq!(redis.render(&event("t", "o", "a.b")), "events:a.b");
        assert_eq!(redis.render(&event("t", "o", "é\n")), "events:é%0A");

        let plain = Template::parse("events.{aggregate_id}").unwrap();
        assert_eq!(plain.render(&event("t", "o", "x.other")), "events.x.other");
    }
}
