//! Who may change things through the admin API: whoever sends `admin_token` as
//! `Authorization: Bearer <token>`.
//!
//! Read-only endpoints stay open (the listener is on loopback by default). Without a
//! configured token every changing request is refused, so a node is never changeable by
//! accident. Tokens are compared as SHA-256 digests, byte by byte without an early exit,
//! so the time taken tells nothing about how much of a guess was right (nor its length).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use ring::digest::{SHA256, digest};
use serde_json::json;

/// Why a changing request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `admin_token` is configured: changes are off (403).
    NoTokenConfigured,
    /// No bearer token in the request (401).
    Missing,
    /// A token that is not the configured one (403).
    Wrong,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::NoTokenConfigured => (
                StatusCode::FORBIDDEN,
                "changes through the admin API are disabled: set admin_token (OPENCLUSTER_ADMIN_TOKEN) on this \
                 node and send it as `Authorization: Bearer <token>`",
            ),
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the node's admin_token as `Authorization: Bearer <token>`",
            ),
            Refusal::Wrong => (StatusCode::FORBIDDEN, "wrong admin token"),
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if self == Refusal::Missing {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Ok when the request carries the configured token.
pub fn authorize(configured: Option<&str>, headers: &HeaderMap) -> Result<(), Refusal> {
    let configured = configured.ok_or(Refusal::NoTokenConfigured)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(Refusal::Missing)?;
    if same_secret(given, configured) { Ok(()) } else { Err(Refusal::Wrong) }
}

/// Compares two secrets in time that depends on neither.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (digest(&SHA256, a.as_bytes()), digest(&SHA256, b.as_bytes()));
    let difference = a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn tokens_are_checked() {
        let token = "0123456789abcdef0123";
        assert!(authorize(Some(token), &with_auth(&format!("Bearer {token}"))).is_ok());
        let status = |r: Result<(), Refusal>| r.unwrap_err().into_response().status();
        assert_eq!(status(authorize(Some(token), &with_auth("Bearer nope"))), StatusCode::FORBIDDEN);
        assert_eq!(status(authorize(Some(token), &with_auth(token))), StatusCode::UNAUTHORIZED);
        assert_eq!(status(authorize(Some(token), &HeaderMap::new())), StatusCode::UNAUTHORIZED);
        assert_eq!(status(authorize(None, &with_auth(&format!("Bearer {token}")))), StatusCode::FORBIDDEN);
        assert!(same_secret("a", "a") && !same_secret("a", "b") && !same_secret("a", "aa"));
    }
}
