//! Putting the token on a request: a header (usually `Authorization: Bearer`) or a cookie.

use http::{HeaderName, HeaderValue};
use shiftkey_auth::TokenSet;

/// How the token travels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Injector {
    /// `Authorization: Bearer <token>` (default).
    #[default]
    Bearer,
    /// `<name>: <prefix><token>`, e.g. `X-Api-Key`.
    Header {
        /// Header name.
        name: HeaderName,
        /// Text before the token (may be empty).
        prefix: String,
    },
    /// A cookie `<name>=<token>` (a `JSESSIONID` session, for example).
    Cookie {
        /// Cookie name.
        name: String,
    },
}

impl Injector {
    /// Puts `token` on `headers`, replacing a previous token (a retry) and keeping other cookies.
    /// Returns `false` if the token cannot be a header value (it has control characters).
    pub fn apply(&self, headers: &mut http::HeaderMap, token: &TokenSet) -> bool {
        let Some((name, mut value)) = self.header(token) else {
            return false;
        };
        if let Self::Cookie { name: cookie } = self {
            let prefix = format!("{cookie}=");
            let others: Vec<String> = headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| {
                    v.split(';')
                        .map(|c| c.trim().to_owned())
                        .collect::<Vec<_>>()
                })
                .filter(|c| !c.is_empty() && !c.starts_with(&prefix))
                .collect();
            if !others.is_empty() {
                let merged = format!(
                    "{}; {}",
                    others.join("; "),
                    value.to_str().unwrap_or_default()
                );
                match HeaderValue::from_str(&merged) {
                    Ok(v) => value = v,
                    Err(_) => return false,
                }
                value.set_sensitive(true);
            }
        }
        headers.insert(name, value);
        true
    }

    /// The header to add for `token`, marked sensitive so `Debug` and HTTP/2 indexing skip it.
    /// `None` if the token cannot be a header value (it has control characters).
    #[must_use]
    pub fn header(&self, token: &TokenSet) -> Option<(HeaderName, HeaderValue)> {
        let secret = token.access_token.expose();
        let (name, value) = match self {
            Self::Bearer => (http::header::AUTHORIZATION, format!("Bearer {secret}")),
            Self::Header { name, prefix } => (name.clone(), format!("{prefix}{secret}")),
            Self::Cookie { name } => (http::header::COOKIE, format!("{name}={secret}")),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }
}
