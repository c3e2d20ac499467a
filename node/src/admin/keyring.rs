//! `/v1/keyring`: the gossip keyring's key ids, and rotation without a restart.
//!
//! `GET /v1/keyring` shows the ids (never the keys). `POST /v1/keyring/install`, `/use` and
//! `/remove` take `{"key": "<base64>"}`, the key as `opencluster-pki gossip-key` prints it,
//! and need `admin_token`. Answers: 200 with the keyring now and whether it changed; 400
//! for a body or key that cannot be read; 409 when the keyring refuses (removing the
//! primary key, using a key not installed); 404 when membership is off; 500 when the new
//! keyring could not be saved (then it is not used either).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use opencluster_pki::GossipKey;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use super::auth::authorize;
use crate::membership::keyring::{Change, ChangeError};

/// Largest request body read.
const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    key: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn membership_off() -> Response {
    error(StatusCode::NOT_FOUND, "membership is off (gossip_addr is empty): no gossip keyring is in use")
}

pub async fn show(State(s): State<Arc<AdminState>>) -> Response {
    match &s.keyring {
        Some(keyring) => Json(keyring.view()).into_response(),
        None => membership_off(),
    }
}

pub async fn install(state: State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    change(state, headers, body, Change::Install).await
}

pub async fn use_key(state: State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    change(state, headers, body, Change::Use).await
}

pub async fn remove(state: State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Response {
    change(state, headers, body, Change::Remove).await
}

async fn change(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
    make: fn(GossipKey) -> Change,
) -> Response {
    if let Err(refusal) = authorize(s.admin_token.as_deref(), &headers) {
        return refusal.into_response();
    }
    let Some(keyring) = &s.keyring else { return membership_off() };
    if body.len() > MAX_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {MAX_BODY} bytes"));
    }
    let body: KeyBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"key\": \"<base64 key from opencluster-pki gossip-key>\"}}: {e}"
                ),
            );
        }
    };
    let key: GossipKey = match body.key.parse() {
        Ok(k) => k,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match keyring.change(make(key)).await {
        Ok((changed, view)) => Json(json!({
            "changed": changed,
            "primary": view.primary,
            "keys": view.keys,
            "source": view.source,
        }))
        .into_response(),
        Err(e @ ChangeError::Refused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ ChangeError::Persist(_)) => {
            tracing::error!(error = %e, "gossip keyring change not saved, so not applied");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}
