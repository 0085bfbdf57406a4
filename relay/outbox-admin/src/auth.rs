//! Who may look and who may change: read-only, a token with a login page and a session
//! cookie, or basic auth; CSRF tokens for every change.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Who may use the admin.
#[derive(Clone, Default)]
pub enum Auth {
    /// Anyone who can reach it may look; nobody may change anything (the default).
    #[default]
    ReadOnly,
    /// Everyone must log in with this token (once, on the login page; a session cookie keeps
    /// them logged in while the admin runs), and may then change things.
    Token(String),
    /// Everyone must send these basic-auth credentials, and may then change things.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secrets.
        match self {
            Auth::ReadOnly => f.write_str("ReadOnly"),
            Auth::Token(_) => f.write_str("Token(…)"),
            Auth::Basic { user, .. } => write!(f, "Basic {{ user: {user:?}, password: … }}"),
        }
    }
}

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "outbox_admin_session";

/// Sessions kept at most; the oldest is dropped beyond (it logs in again).
const MAX_SESSIONS: usize = 1_000;

/// What the request's sender may do.
#[derive(Clone, Debug)]
pub(crate) enum Viewer {
    /// May look only (read-only admin).
    Reader,
    /// May change things, with this CSRF token on every change.
    Writer { csrf: String },
    /// Must log in (token admin, no valid session).
    Anonymous,
    /// Sent wrong or no basic-auth credentials.
    Unauthorized,
}

/// Sessions of a token admin (session id → its CSRF token), and the CSRF token of a basic-auth
/// admin.
pub(crate) struct Sessions {
    auth: Auth,
    by_id: Mutex<(HashMap<String, String>, VecDeque<String>)>,
    basic_csrf: String,
}

/// A fresh random token: 244 random bits, as hex.
pub(crate) fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether two secrets are equal, without the comparison's time depending on where they differ:
/// the digests are compared, not the secrets.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

impl Sessions {
    pub(crate) fn new(auth: &Auth) -> Self {
        Self {
            auth: auth.clone(),
            by_id: Mutex::new((HashMap::new(), VecDeque::new())),
            basic_csrf: random_token(),
        }
    }

    /// Whether a login page exists (token admins).
    pub(crate) fn uses_login(&self) -> bool {
        matches!(self.auth, Auth::Token(_))
    }

    /// Whether credentials were configured at all.
    pub(crate) fn is_read_only(&self) -> bool {
        matches!(self.auth, Auth::ReadOnly)
    }

    /// Who sent a request with these headers.
    pub(crate) fn viewer(&self, headers: &axum::http::HeaderMap) -> Viewer {
        match &self.auth {
            Auth::ReadOnly => Viewer::Reader,
            Auth::Token(_) => {
                let session = cookie(headers, COOKIE);
                let sessions = self.lock();
                match session.and_then(|id| sessions.0.get(&id)) {
                    Some(csrf) => Viewer::Writer { csrf: csrf.clone() },
                    None => Viewer::Anonymous,
                }
            }
            Auth::Basic { user, password } => {
                let sent = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Basic "))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                let expected = format!("{user}:{password}");
                match sent {
                    Some(sent) if same_secret(&sent, &expected) => Viewer::Writer {
                        csrf: self.basic_csrf.clone(),
                    },
                    _ => Viewer::Unauthorized,
                }
            }
        }
    }

    /// Logs in with `token`: a new session id, or `None` if the token is wrong.
    pub(crate) fn login(&self, token: &str) -> Option<String> {
        let Auth::Token(expected) = &self.auth else {
            return None;
        };
        if !same_secret(token, expected) {
            return None;
        }
        let id = random_token();
        let mut sessions = self.lock();
        let (by_id, order) = &mut *sessions;
        by_id.insert(id.clone(), random_token());
        order.push_back(id.clone());
        while order.len() > MAX_SESSIONS {
            if let Some(old) = order.pop_front() {
                by_id.remove(&old);
            }
        }
        Some(id)
    }

    /// Ends the session the headers carry.
    pub(crate) fn logout(&self, headers: &axum::http::HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            let mut sessions = self.lock();
            let (by_id, order) = &mut *sessions;
            by_id.remove(&id);
            order.retain(|o| *o != id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, String>, VecDeque<String>)> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

    #[test]
    fn a_token_admin_knows_a_session_only_after_a_login_with_the_token() {
        let sessions = Sessions::new(&Auth::Token("s3cret".into()));
        assert!(sessions.login("wrong").is_none());
        let id = sessions.login("s3cret").unwrap();
        let mut headers = HeaderMap::new();
        assert!(matches!(sessions.viewer(&headers), Viewer::Anonymous));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {COOKIE}={id}")).unwrap(),
        );
        assert!(matches!(sessions.viewer(&headers), Viewer::Writer { .. }));
        sessions.logout(&headers);
        assert!(matches!(sessions.viewer(&headers), Viewer::Anonymous));
    }

    #[test]
    fn basic_auth_needs_both_user_and_password() {
        let sessions = Sessions::new(&Auth::Basic {
            user: "ops".into(),
            password: "pw".into(),
        });
        let with = |credentials: &str| {
            let mut headers = HeaderMap::new();
            let value = base64::engine::general_purpose::STANDARD.encode(credentials);
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
            );
            sessions.viewer(&headers)
        };
        assert!(matches!(with("ops:pw"), Viewer::Writer { .. }));
        assert!(matches!(with("ops:nope"), Viewer::Unauthorized));
        assert!(matches!(with("other:pw"), Viewer::Unauthorized));
        assert!(matches!(
            sessions.viewer(&HeaderMap::new()),
            Viewer::Unauthorized
        ));
    }

    #[test]
    fn the_debug_form_shows_no_secret() {
        let shown = format!(
            "{:?} {:?}",
            Auth::Token("tok-123".into()),
            Auth::Basic {
                user: "ops".into(),
                password: "pw-456".into()
            }
        );
        assert!(
            !shown.contains("tok-123") && !shown.contains("pw-456"),
            "{shown}"
        );
    }
}
