//! Delivers outbox events as signed JSON `POST`s to an HTTP endpoint.
//!
//! The body is an envelope ([`Envelope`]): the event's id, type, aggregate, creation time,
//! headers and payload. The request carries:
//! - `Content-Type: application/json`;
//! - `Outbox-Event-Id` and `Outbox-Event-Type`;
//! - `Outbox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` when a secret is
//!   set. A receiver recomputes the MAC over the timestamp and the raw body, compares in constant
//!   time, and rejects timestamps outside its tolerance, so a captured request cannot be
//!   replayed later. [`verify_signature`] does exactly that.
//!
//! Status mapping: any 2xx is delivered; 408, 429 and 5xx are retryable, honouring
//! `Retry-After` (seconds or an HTTP date); every other status is permanent. Connection errors
//! and timeouts (connect and total, both configurable) are retryable.
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
    /// Checks the URL and builds the client.
    pub fn build(self) -> Result<WebhookTransport, WebhookError> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| WebhookError::InvalidUrl {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::InvalidUrl {
                url: self.url,
                reason: "scheme must be http or https".into(),
            });
        }
        // TLS uses rustls with the ring provider unless the application installed another.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(WebhookTransport {
            client,
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
    secret: Option<Vec<u8>>,
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

/// The `Outbox-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
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

/// Checks an `Outbox-Signature` header against the raw `body`, accepting timestamps within
/// `tolerance` of `now` (unix seconds). For receivers.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => given = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return Err(SignatureError::Malformed);
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Expired);
    }
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| SignatureError::Mismatch)?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
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
        let mut request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Outbox-Event-Id", event.id.to_string())
            .header("Outbox-Event-Type", event.event_type.as_str());
        let now = Utc::now();
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, sign(secret, now.timestamp(), &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            DeliveryError::retryable(format!("POST {} {what}", self.url)).with_source(e)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("POST {} answered {status}", self.url);
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

    #[test]
    fn signatures_verify_and_reject_tampering_and_replays() {
        let body = br#"{"id":"x"}"#;
        let header = sign(b"secret", 1_000, body);
        let ok = verify_signature(b"secret", &header, body, 1_100, Duration::from_secs(300));
        assert_eq!(ok, Ok(()));
        let tampered = verify_signature(
            b"secret",
            &header,
            br#"{"id":"y"}"#,
            1_000,
            Duration::from_secs(300),
        );
        assert_eq!(tampered, Err(SignatureError::Mismatch));
        let other_key = verify_signature(b"other", &header, body, 1_000, Duration::from_secs(300));
        assert_eq!(other_key, Err(SignatureError::Mismatch));
        let replay = verify_signature(b"secret", &header, body, 2_000, Duration::from_secs(300));
        assert_eq!(replay, Err(SignatureError::Expired));
        let garbage = verify_signature(b"secret", "v1=zz", body, 1_000, Duration::from_secs(300));
        assert_eq!(garbage, Err(SignatureError::Malformed));
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
