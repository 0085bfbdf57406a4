//! Delivers outbox events as signed JSON `POST`s to an HTTP endpoint.
//!
//! The body is an envelope ([`Envelope`]): the event's id, type, aggregate, creation time,
//! headers and payload. The request carries:
//! - `Content-Type: application/json`;
//! - `Outbox-Event-Id` and `Outbox-Event-Type`;
//! - `Outbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<event id>.<event type>.<body>">`
//!   when a secret is set. The MAC covers the headers a receiver acts on (it de-duplicates by the
//!   event id) as well as the body. A receiver recomputes it, compares in constant time, and
//!   rejects timestamps outside its tolerance, so a captured request cannot be replayed later;
//!   during a key rotation a header may carry several `v1=` values, and any one matching is
//!   enough. [`verify_signature`] does exactly that.
//!
//! Status mapping: any 2xx is delivered; 408, 429 and 5xx are retryable, honouring
//! `Retry-After` (seconds or an HTTP date; the worker caps it by its retry policy); a redirect is
//! never followed — it is a permanent error, since following it would send the signed request
//! to another server; every other status is permanent. Connection errors and timeouts (connect
//! and total, both configurable) are retryable.
//!
//! Nothing this transport prints or stores (errors, `last_error`, logs) contains the URL's
//! credentials or query string: it shows `https://host/path?…`.
//!
//! Delivery is at least once: consumers de-duplicate by `Outbox-Event-Id` (also `id` in the
//! body).
//!
//! ```no_run
//! use std::time::Duration;
//! use outbox_transport_webhook::WebhookTransport;
//!
//! let transport = WebhookTransport::builder("https://hooks.example.com/outbox")
//!     .secret(b"shared secret".to_vec())
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//! # Ok::<(), outbox_transport_webhook::WebhookError>(())
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use outbox_core::{DeliveryError, EventId, OutboxEvent, Transport};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Outbox-Signature";

/// What the endpoint receives as the request body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event id; de-duplicate by it.
    pub id: EventId,
    /// The event type.
    pub event_type: String,
    /// The kind of aggregate.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// When the event was emitted.
    pub created_at: DateTime<Utc>,
    /// The event's headers (trace context, correlation id).
    pub headers: BTreeMap<String, String>,
    /// The ordering key, if any.
    pub ordering_key: Option<String>,
    /// The event's JSON payload.
    pub payload: serde_json::Value,
}

impl From<&OutboxEvent> for Envelope {
    fn from(e: &OutboxEvent) -> Self {
        Self {
            id: e.id,
            event_type: e.event_type.clone(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            created_at: e.created_at,
            headers: e.headers.clone(),
            ordering_key: e.ordering_key.clone(),
            payload: e.payload.clone(),
        }
    }
}

/// Why a webhook transport could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not an absolute http(s) URL.
    #[error("invalid webhook URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signing secret is empty: every receiver would accept any signature made with it.
    #[error("the webhook secret is empty")]
    EmptySecret,
    /// The HTTP client could not be set up.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Builds a [`WebhookTransport`].
#[derive(Debug)]
#[must_use = "call build() to get the transport"]
pub struct WebhookBuilder {
    url: String,
    secret: Option<Vec<u8>>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl WebhookBuilder {
    /// Signs every request with HMAC-SHA256 under `secret`.
    pub fn secret(mut self, secret: Vec<u8>) -> Self {
        self.secret = Some(secret);
        self
    }
    /// Longest wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Longest wait for the whole request and response (default 30 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Checks the URL and the secret, and builds the client.
    pub fn build(self) -> Result<WebhookTransport, WebhookError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| WebhookError::InvalidUrl {
            url: "(not shown: it does not parse, and may hold credentials)".into(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::InvalidUrl {
                url: redact(&url),
                reason: "scheme must be http or https".into(),
            });
        }
        if self.secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(WebhookError::EmptySecret);
        }
        // TLS uses rustls with the ring provider unless the application installed another.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(WebhookError::Client)?;
        Ok(WebhookTransport {
            client,
            shown: redact(&url),
            url,
            secret: self.secret,
        })
    }
}

/// POSTs each event to one URL.
#[derive(Clone, Debug)]
pub struct WebhookTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as printed: no credentials, no query.
    shown: String,
    secret: Option<Vec<u8>>,
}

/// `url` without its credentials and with its query replaced by `?…`: safe to print and store.
pub fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

impl WebhookTransport {
    /// Starts configuring a transport that posts to `url`.
    pub fn builder(url: impl Into<String>) -> WebhookBuilder {
        WebhookBuilder {
            url: url.into(),
            secret: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a signature covers: the request's event id and type headers and its raw body.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// The `Outbox-Event-Id` header.
    pub event_id: &'a str,
    /// The `Outbox-Event-Type` header.
    pub event_type: &'a str,
    /// The raw request body.
    pub body: &'a [u8],
}

/// The `Outbox-Signature` value for a request sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, signed: Signed<'_>) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, signed).finalize().into_bytes())
    )
}

/// The MAC over `"<t>.<event id>.<event type>.<body>"`. HMAC accepts keys of any length.
fn mac(secret: &[u8], timestamp: i64, signed: Signed<'_>) -> Hmac<Sha256> {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => <Hmac<Sha256> as KeyInit>::new(&Default::default()),
    };
    for part in [
        timestamp.to_string().as_bytes(),
        b".",
        signed.event_id.as_bytes(),
        b".",
        signed.event_type.as_bytes(),
        b".",
    ] {
        mac.update(part);
    }
    mac.update(signed.body);
    mac
}

/// Why a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<seconds>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is outside the tolerance (a replay, or a badly skewed clock).
    #[error("signature timestamp outside the tolerance")]
    Expired,
    /// The MAC does not match the body.
    #[error("signature does not match")]
    Mismatch,
}

/// The header carrying the event's id.
pub const EVENT_ID_HEADER: &str = "Outbox-Event-Id";

/// The id of the event a request carries, from its [`EVENT_ID_HEADER`] value, for the
/// receiver's de-duplication (the `outbox-inbox` crate); verify the signature first, since the
/// id is signed. `None` if the value is not an event id.
pub fn event_id(header: &str) -> Option<EventId> {
    header.trim().parse().ok()
}

/// Checks an `Outbox-Signature` header against what it signs, accepting timestamps within
/// `tolerance` of `now` (unix seconds) and any one of several `v1=` values (key rotation). For
/// receivers.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    signed: Signed<'_>,
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut given = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp.filter(|_| !given.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Expired);
    }
    let expected = mac(secret, timestamp, signed);
    if given
        .iter()
        .any(|candidate| expected.clone().verify_slice(candidate).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Reads `Retry-After`: delta seconds or an HTTP date.
fn retry_after(response: &reqwest::Response, now: DateTime<Utc>) -> Option<Duration> {
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[async_trait]
impl Transport for WebhookTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&Envelope::from(event))
            .map_err(|e| DeliveryError::permanent("event is not serializable").with_source(e))?;
        let id = event.id.to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, id.as_str())
            .header("Outbox-Event-Type", event.event_type.as_str());
        // Trace context also as HTTP headers, where tracing middleware looks for it.
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = event.headers.get(name) {
                request = request.header(name, value.as_str());
            }
        }
        let now = Utc::now();
        if let Some(secret) = &self.secret {
            let signed = Signed {
                event_id: &id,
                event_type: &event.event_type,
                body: &body,
            };
            request = request.header(SIGNATURE_HEADER, sign(secret, now.timestamp(), signed));
        }
        let response = request.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            // reqwest's error names the full URL: drop it, ours is redacted.
            DeliveryError::retryable(format!("POST {} {what}", self.shown))
                .with_source(e.without_url())
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("POST {} answered {status}", self.shown);
        if status.is_redirection() {
            return Err(DeliveryError::permanent(format!(
                "{message}; redirects are not followed (they would send the signed request \
                 elsewhere): point the route at the final URL"
            )));
        }
        if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(match retry_after(&response, now) {
                Some(after) => DeliveryError::retry_after(message, after),
                None => DeliveryError::retryable(message),
            })
        } else {
            Err(DeliveryError::permanent(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn signed<'a>(event_id: &'a str, event_type: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed {
            event_id,
            event_type,
            body,
        }
    }

    #[test]
    fn signatures_verify_and_reject_tampering_and_replays() {
        let body = br#"{"id":"x"}"#;
        let ok_signed = signed("e-1", "file.stored", body);
        let header = sign(b"secret", 1_000, ok_signed);
        let check = |secret: &[u8], header: &str, s: Signed<'_>, now| {
            verify_signature(secret, header, s, now, TOLERANCE)
        };
        assert_eq!(check(b"secret", &header, ok_signed, 1_100), Ok(()));
        let tampered = signed("e-1", "file.stored", br#"{"id":"y"}"#);
        assert_eq!(
            check(b"secret", &header, tampered, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(b"other", &header, ok_signed, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(b"secret", &header, ok_signed, 2_000),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            check(b"secret", "v1=zz", ok_signed, 1_000),
            Err(SignatureError::Malformed)
        );
    }

    /// The event id and type headers are signed: changing either (to dodge a receiver's
    /// de-duplication, say) breaks the signature.
    #[test]
    fn the_id_and_type_headers_are_signed() {
        let body = b"{}";
        let header = sign(b"secret", 1_000, signed("e-1", "file.stored", body));
        for forged in [
            signed("e-2", "file.stored", body),
            signed("e-1", "file.deleted", body),
        ] {
            let result = verify_signature(b"secret", &header, forged, 1_000, TOLERANCE);
            assert_eq!(result, Err(SignatureError::Mismatch));
        }
    }

    /// With several `v1=` values (a key rotation), any one matching is enough, wherever it
    /// stands; none matching is a mismatch.
    #[test]
    fn every_v1_value_is_checked() {
        let s = signed("e-1", "file.stored", b"{}");
        let new = sign(b"new", 1_000, s);
        let old = sign(b"old", 1_000, s);
        let old_mac = old.split_once("v1=").map(|(_, m)| m).unwrap_or_default();
        let both = format!("{new},v1={old_mac}");
        assert_eq!(verify_signature(b"old", &both, s, 1_000, TOLERANCE), Ok(()));
        assert_eq!(verify_signature(b"new", &both, s, 1_000, TOLERANCE), Ok(()));
        assert_eq!(
            verify_signature(b"other", &both, s, 1_000, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_request_gives_back_its_event_id() {
        let id = EventId::new();
        assert_eq!(event_id(&id.to_string()), Some(id));
        assert_eq!(event_id(&format!(" {id} ")), Some(id));
        assert_eq!(event_id("e-1"), None);
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let built = WebhookTransport::builder("https://example.com/hook")
            .secret(Vec::new())
            .build();
        assert!(matches!(built, Err(WebhookError::EmptySecret)), "{built:?}");
    }

    #[test]
    fn printed_urls_hold_no_credentials_or_query() {
        let url = reqwest::Url::parse("http://hookuser:R0utePW@example.com:8080/hook?token=TOK3N")
            .expect("a URL");
        assert_eq!(redact(&url), "http://example.com:8080/hook?…");
        let bad = WebhookTransport::builder("ftp://u:R0utePW@example.com/x?token=TOK3N").build();
        let text = format!("{}", bad.expect_err("refused"));
        assert!(
            !text.contains("R0utePW") && !text.contains("TOK3N"),
            "{text}"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(matches!(
            WebhookTransport::builder("not a url").build(),
            Err(WebhookError::InvalidUrl { .. })
        ));
        assert!(matches!(
            WebhookTransport::builder("ftp://example.com/x").build(),
            Err(WebhookError::InvalidUrl { .. })
        ));
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
