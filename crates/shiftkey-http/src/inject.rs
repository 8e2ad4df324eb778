//! Putting the token on a request: a header (usually `Authorization: Bearer`) or a cookie.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use shiftkey_auth::TokenSet;
use zeroize::Zeroizing;

/// A header value made of `parts`, for a credential: the bytes are written once into a buffer of
/// the exact size, which the value (and every clone of it) shares and which is zeroized when the
/// last of them is dropped. Marked sensitive, so `Debug` and HTTP/2 header indexing skip it.
/// `None` if the parts cannot be a header value (control characters); the buffer is zeroized
/// then too.
///
/// What remains: the bytes hyper writes to the connection (its write buffer, and TLS's) are
/// copies this crate cannot reach; `docs/security.md` lists them.
///
/// # Example
/// ```
/// let value = shiftkey_http::secret_header_value(&["Bearer ", "eyJhbGciOi"]).unwrap();
/// assert!(value.is_sensitive());
/// assert_eq!(value.as_bytes(), b"Bearer eyJhbGciOi");
/// assert!(shiftkey_http::secret_header_value(&["Bearer ", "a\nb"]).is_none());
/// ```
#[must_use]
pub fn secret_header_value(parts: &[&str]) -> Option<HeaderValue> {
    let mut buf = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
    }
    shared_value(buf)
}

/// The value over `buf` itself, not a copy of it.
fn shared_value(buf: Zeroizing<Vec<u8>>) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(Bytes::from_owner(buf)).ok()?;
    value.set_sensitive(true);
    Some(value)
}

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
                let others = others.join("; ");
                match secret_header_value(&[&others, "; ", value.to_str().unwrap_or_default()]) {
                    Some(v) => value = v,
                    None => return false,
                }
            }
        }
        headers.insert(name, value);
        true
    }

    /// The header to add for `token`, marked sensitive so `Debug` and HTTP/2 indexing skip it.
    /// `None` if the token cannot be a header value (it has control characters).
    #[must_use]
    pub fn header(&self, token: &TokenSet) -> Option<(HeaderName, HeaderValue)> {
        let (name, parts) = self.parts(token.access_token.expose());
        Some((name, secret_header_value(&parts)?))
    }

    /// The header's name and the parts its value is made of.
    fn parts<'a>(&'a self, secret: &'a str) -> (HeaderName, [&'a str; 3]) {
        match self {
            Self::Bearer => (http::header::AUTHORIZATION, ["Bearer ", secret, ""]),
            Self::Header { name, prefix } => (name.clone(), [prefix, secret, ""]),
            Self::Cookie { name } => (http::header::COOKIE, [name, "=", secret]),
        }
    }
}

/// The credential header of the current token, built once and shared (a reference count, not
/// a copy of the secret) by every request that carries it; rebuilt when the token changes.
#[derive(Debug, Default)]
pub(crate) struct HeaderCache(ArcSwapOption<HeaderValue>);

impl HeaderCache {
    /// [`Injector::apply`], with the header built once per token.
    pub(crate) fn apply(
        &self,
        injector: &Injector,
        headers: &mut http::HeaderMap,
        token: &TokenSet,
    ) -> bool {
        if matches!(injector, Injector::Cookie { .. }) && headers.contains_key(http::header::COOKIE)
        {
            // Merged with the request's own cookies: its own value.
            return injector.apply(headers, token);
        }
        let (name, parts) = injector.parts(token.access_token.expose());
        let cached = self.0.load();
        let value = match cached.as_deref() {
            // The cached value is exactly what would be built: the same token.
            Some(v) if is_concatenation(v.as_bytes(), &parts) => v.clone(),
            _ => {
                let Some(v) = secret_header_value(&parts) else {
                    return false;
                };
                self.0.store(Some(Arc::new(v.clone())));
                v
            }
        };
        headers.insert(name, value);
        true
    }
}

/// Whether `bytes` is `parts` one after the other.
fn is_concatenation(bytes: &[u8], parts: &[&str]) -> bool {
    let mut rest = bytes;
    for part in parts {
        match rest.strip_prefix(part.as_bytes()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn a_credential_header_is_the_zeroizing_buffer_itself_not_a_copy() {
        let token = "t".repeat(4096);
        let mut buf = Zeroizing::new(Vec::with_capacity(7 + token.len()));
        buf.extend_from_slice(b"Bearer ");
        buf.extend_from_slice(token.as_bytes());
        let at = buf.as_ptr();
        let value = shared_value(buf).unwrap();
        // Same address: the only copy of the header's bytes is the one zeroized on drop.
        assert_eq!(value.as_bytes().as_ptr(), at);
        assert!(value.is_sensitive());
        assert_eq!(value.clone().as_bytes().as_ptr(), at);
    }

    #[test]
    fn the_credential_header_is_built_once_per_token_and_again_for_a_new_one() {
        let tok = |s: &str| {
            TokenSet::new(
                s,
                std::time::Duration::from_secs(60),
                tokio::time::Instant::now(),
                std::time::SystemTime::UNIX_EPOCH,
            )
        };
        let cache = HeaderCache::default();
        let put = |injector: &Injector, token: &TokenSet| {
            let mut headers = http::HeaderMap::new();
            assert!(cache.apply(injector, &mut headers, token));
            let (name, _) = injector.parts("");
            headers[name].clone()
        };
        let (first, second) = (tok("first"), tok("second"));
        let a = put(&Injector::Bearer, &first);
        let b = put(&Injector::Bearer, &first);
        assert_eq!(a.as_bytes(), b"Bearer first");
        // The same buffer: built once, shared by both requests.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert!(b.is_sensitive());
        let c = put(&Injector::Bearer, &second);
        assert_eq!(c.as_bytes(), b"Bearer second");
        // A token that is a prefix of the cached one is not taken for it.
        assert_eq!(
            put(&Injector::Bearer, &tok("sec")).as_bytes(),
            b"Bearer sec"
        );
        let cookie = Injector::Cookie {
            name: "JSESSIONID".into(),
        };
        assert_eq!(put(&cookie, &second).as_bytes(), b"JSESSIONID=second");
        // A request with cookies of its own gets them merged, as without the cache.
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, HeaderValue::from_static("a=1"));
        assert!(cache.apply(&cookie, &mut headers, &second));
        assert_eq!(
            headers[http::header::COOKIE].as_bytes(),
            b"a=1; JSESSIONID=second"
        );
        let mut headers = http::HeaderMap::new();
        assert!(!cache.apply(&Injector::Bearer, &mut headers, &tok("a\nb")));
        assert!(headers.is_empty());
    }

    #[test]
    fn every_injector_builds_its_exact_header_and_refuses_control_characters() {
        let tok = |s: &str| {
            TokenSet::new(
                s,
                std::time::Duration::from_secs(60),
                tokio::time::Instant::now(),
                std::time::SystemTime::UNIX_EPOCH,
            )
        };
        let token = tok("tok");
        let cases = [
            (Injector::Bearer, "authorization", "Bearer tok"),
            (
                Injector::Header {
                    name: HeaderName::from_static("x-api-key"),
                    prefix: "Key ".into(),
                },
                "x-api-key",
                "Key tok",
            ),
            (
                Injector::Cookie {
                    name: "JSESSIONID".into(),
                },
                "cookie",
                "JSESSIONID=tok",
            ),
        ];
        for (injector, name, value) in cases {
            let (n, v) = injector.header(&token).unwrap();
            assert_eq!((n.as_str(), v.as_bytes()), (name, value.as_bytes()));
            assert!(v.is_sensitive());
        }
        let bad = tok("to\r\nk");
        assert!(Injector::Bearer.header(&bad).is_none());
        // The cookie merged with a script's other cookies is a zeroizing value too.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; JSESSIONID=old"),
        );
        let cookie = Injector::Cookie {
            name: "JSESSIONID".into(),
        };
        assert!(cookie.apply(&mut headers, &token));
        let merged = &headers[http::header::COOKIE];
        assert_eq!(merged.as_bytes(), b"a=1; JSESSIONID=tok");
        assert!(merged.is_sensitive());
    }
}
