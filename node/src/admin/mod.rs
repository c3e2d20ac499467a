//! The admin HTTP API: `/v1/health`, `/v1/ready`, `/v1/status`, `/v1/members`, `/v1/placement`,
//! `/metrics`, and the
//! gossip keyring (`/v1/keyring`, changed through `/v1/keyring/install|use|remove`, which
//! need `admin_token`: [`auth`]); [`client`] is its other end, for the `health` and
//! `members` subcommands.
//!
//! It listens on loopback by default: status and metrics are for the operator, not for
//! every host that can reach the node.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::membership::keyring::LiveKeyring;
use crate::membership::members::{Counts, Members};
use crate::metrics::Metrics;
use crate::resp::server::ServerState;
use crate::security::Security;
use crate::store::flusher::FsyncPolicy;

mod auth;
pub mod client;
mod keyring;

pub use client::{ClientError, check_health, check_ready, get_members};

pub struct AdminState {
    pub server: Arc<ServerState>,
    pub security: Arc<Security>,
    pub data_dir: PathBuf,
    pub node_id: u64,
    /// The member table; `None` when membership is off (`gossip_addr` empty).
    pub members: Option<Arc<Members>>,
    /// The gossip keyring in use; `None` when membership is off.
    pub keyring: Option<Arc<LiveKeyring>>,
    /// `admin_token`: what the changing endpoints require.
    pub admin_token: Option<String>,
    /// The memory budget and the watcher's readings.
    pub memory: Arc<crate::memory::MemoryWatch>,
    /// Whether the node was told whom to join (`join` or `join_service`): then it is not
    /// ready until it has a cluster.
    pub joins: bool,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/status", get(status))
        .route("/v1/members", get(members))
        .route("/v1/placement", get(placement))
        .route("/v1/keyring", get(keyring::show))
        .route("/v1/keyring/install", post(keyring::install))
        .route("/v1/keyring/use", post(keyring::use_key))
        .route("/v1/keyring/remove", post(keyring::remove))
        .route("/metrics", get(metrics))
        .with_state(state)
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}

/// The node is healthy while its store accepts durable writes.
async fn health(State(s): State<Arc<AdminState>>) -> Response {
    let server = &s.server;
    let flush_error = server.cluster.flusher().last_error();
    let mut body = json!({
        "status": if flush_error.is_none() { "ok" } else { "failing" },
        "node": server.node_name,
        "datacenter": server.datacenter,
        "version": crate::VERSION,
        "insecure_default_keys": s.security.insecure_default_keys,
    });
    let code = match flush_error {
        None => StatusCode::OK,
        Some(e) => {
            body["reason"] = Value::from(format!("store flush failing: {e}"));
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (code, Json(body)).into_response()
}

/// The node has caught up: healthy, in a cluster when told to join one, and holding the
/// partitions it owns (no copy from their other owners queued or running). A node that
/// is not ready still serves clients; readiness is what a rolling update waits for
/// before it stops the next node.
async fn ready(State(s): State<Arc<AdminState>>) -> Response {
    let waiting = waiting_for(&s);
    let code = if waiting.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "ready": waiting.is_empty(),
        "node": s.server.node_name,
        "waiting_for": waiting,
    });
    (code, Json(body)).into_response()
}

/// What keeps the node from being ready; empty when it is.
fn waiting_for(s: &AdminState) -> Vec<String> {
    let cluster = &s.server.cluster;
    let mut waiting = Vec::new();
    if let Some(e) = cluster.flusher().last_error() {
        waiting.push(format!("store: flushes are failing: {e}"));
    }
    if s.joins && cluster.placed_nodes() < 2 {
        waiting.push("join: no other node placed yet (join or join_service is set)".to_string());
    }
    if let Some(why) = cluster.not_joined() {
        waiting.push(why);
    }
    let copying = cluster.rebalance_in_progress();
    if copying > 0 {
        waiting.push(format!("rebalance: {copying} partitions to copy from their other owners"));
    }
    waiting
}

#[derive(serde::Deserialize)]
struct PlacementQuery {
    key: Option<String>,
}

/// Where a key lives (`?key=...`: its partition and owners, primary first), or without a
/// key the placement summary of `/v1/status`.
async fn placement(State(s): State<Arc<AdminState>>, Query(q): Query<PlacementQuery>) -> Json<Value> {
    let cluster = &s.server.cluster;
    match q.key {
        Some(key) => Json(cluster.placement_of(key.as_bytes())),
        None => Json(cluster.placement_status()),
    }
}

/// Every member this node knows, itself first, each with `placed`: whether this node
/// places partitions on it (a member that gossips but has not proved itself over mutual
/// TLS, or a connector, is not). Without membership, only itself.
async fn members(State(s): State<Arc<AdminState>>) -> Json<Value> {
    match &s.members {
        Some(members) => {
            let cluster = &s.server.cluster;
            let list = members
                .list()
                .into_iter()
                .map(|m| {
                    let placed = u64::from_str_radix(&m.id, 16).is_ok_and(|id| cluster.places(id));
                    let mut value = json!(m);
                    value["placed"] = json!(placed);
                    value
                })
                .collect();
            Json(Value::Array(list))
        }
        None => {
            let server = &s.server;
            Json(json!([{
                "name": server.node_name,
                "id": format!("{:016x}", s.node_id),
                "datacenter": server.datacenter,
                "role": "node",
                "state": "alive",
                "gossip_addr": Value::Null,
                "client_addr": Value::Null,
                "rpc_addr": Value::Null,
                "version": crate::VERSION,
                "self": true,
                "placed": true,
            }]))
        }
    }
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let member_counts = match &s.members {
        Some(members) => members.counts(),
        None => Counts { alive: 1, ..Counts::default() },
    };
    let server = &s.server;
    let cluster = &server.cluster;
    let flusher = cluster.flusher();
    let stats = cluster.stats_off_workers().await;
    let purge = &server.purge_status;
    let waiting = waiting_for(&s);
    let (fsync, interval_ms) = match flusher.policy() {
        FsyncPolicy::Always => ("always", None),
        FsyncPolicy::Interval(d) => ("interval", Some(d.as_millis() as u64)),
    };
    Json(json!({
        "node": server.node_name,
        "node_id": format!("{:016x}", s.node_id),
        "datacenter": server.datacenter,
        "version": crate::VERSION,
        "uptime_seconds": server.started.elapsed().as_secs(),
        "insecure_default_keys": s.security.insecure_default_keys,
        "ready": { "ready": waiting.is_empty(), "waiting_for": waiting },
        "memory": s.memory.status(),
        "security": s.security.status(),
        "members": {
            "enabled": s.members.is_some(),
            "alive": member_counts.alive,
            "suspect": member_counts.suspect,
            "down": member_counts.down,
            "left": member_counts.left,
        },
        "placement": cluster.placement_status(),
        "cache": cluster.cache_status(),
        "home": cluster.home_status(),
        "clients": {
            "connected": server.clients.connected(),
            "max": server.clients.max,
            "total_connections": server.clients.total(),
            "commands_processed": server.commands_processed(),
        },
        "store": {
            "engine": cluster.store().engine(),
            "path": s.data_dir.join("store"),
            "partitions": cluster.partitions(),
            "keys": stats.keys,
            "expiring_keys": stats.expiring,
            "tombstones": stats.tombstones,
            "bytes_on_disk": cluster.store().size_on_disk(),
            "cache_bytes": server.store_cache_bytes,
            "fsync": fsync,
            "fsync_interval_ms": interval_ms,
            "durable_through_ms": flusher.durable_through_ms(),
            "flush_failures": flusher.failures(),
            "write_buffer": cluster.store().buffer_status().map(|b| json!({
                "records": b.records,
                "bytes": b.bytes,
                "limit_bytes": b.limit_bytes,
                "applied_total": b.applied_total,
                "wal_bytes": b.wal_bytes,
            })),
        },
        "workers": [
            {
                "name": "flusher",
                "state": if flusher.last_error().is_some() { "failing" } else { "running" },
                "durable_through_ms": flusher.durable_through_ms(),
            },
            {
                "name": "purge",
                "state": "running",
                "purged": purge.purged.load(Ordering::Relaxed),
                "tombstones_held": purge.held.load(Ordering::Relaxed),
                "tombstones_unshipped_purged": purge.unshipped.load(Ordering::Relaxed),
                "errors": purge.errors.load(Ordering::Relaxed),
                "last_run_ms": purge.last_run_ms.load(Ordering::Relaxed),
            },
            cluster.rebalance_status(),
            cluster.handoff_status(),
            cluster.repair_status(),
        ],
    }))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let server = &s.server;
    let m = &server.metrics;
    let stats = server.cluster.stats_off_workers().await;
    m.keys.set(stats.keys as i64);
    m.expiring_keys.set(stats.expiring as i64);
    m.tombstones.set(stats.tombstones as i64);
    m.bytes_on_disk.set(server.cluster.store().size_on_disk() as i64);
    server.cluster.mirror_cache_metrics();
    let purge = &server.purge_status;
    Metrics::mirror(&m.purged_total, purge.purged.load(Ordering::Relaxed));
    Metrics::mirror(&m.tombstones_held_total, purge.held.load(Ordering::Relaxed));
    Metrics::mirror(&m.tombstones_unshipped_purged_total, purge.unshipped.load(Ordering::Relaxed));
    Metrics::mirror(&m.flush_failures, server.cluster.flusher().failures());
    if let Some(b) = server.cluster.store().buffer_status() {
        m.write_buffer_bytes.set(b.bytes as i64);
        m.write_buffer_records.set(b.records as i64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}
