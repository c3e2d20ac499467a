//! The connector's admin API: `/v1/health`, `/v1/status` (per remote datacenter: link
//! state, lag, bytes, RTT, last error) and `/metrics` (the node library's metrics of
//! gossip and peer RPC, and the connector's own).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use opencluster_node::membership::members::Members;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::link::Link;

pub struct AdminState {
    pub name: String,
    pub datacenter: String,
    pub node_id: u64,
    pub wan_addr: Option<std::net::SocketAddr>,
    pub wan_advertise: Option<String>,
    pub insecure_default_keys: bool,
    pub security: Value,
    pub members: Arc<Members>,
    pub links: Vec<Arc<Link>>,
    pub share: Arc<crate::share::Share>,
    pub node_metrics: Arc<opencluster_node::metrics::Metrics>,
    pub registry: prometheus::Registry,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(s): State<Arc<AdminState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "role": "connector",
        "version": opencluster_node::VERSION,
        "insecure_default_keys": s.insecure_default_keys,
    }))
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let data_nodes = s.members.data_nodes().len();
    Json(json!({
        "role": "connector",
        "name": s.name,
        "node_id": format!("{:016x}", s.node_id),
        "datacenter": s.datacenter,
        "version": opencluster_node::VERSION,
        "wan": { "addr": s.wan_addr.map(|a| a.to_string()), "advertise": s.wan_advertise },
        "data_nodes": data_nodes,
        "share": s.share.status(),
        "security": s.security,
        "links": s.links.iter().map(|l| l.status()).collect::<Vec<_>>(),
    }))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut out = s.node_metrics.render();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&s.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding the connector metrics failed");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let app = router(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// The `status` subcommand's text: one line per remote datacenter.
pub fn status_text(s: &Value) -> String {
    let mut out = format!(
        "connector {} of datacenter {} ({} data nodes seen)\n",
        s["name"].as_str().unwrap_or("?"),
        s["datacenter"].as_str().unwrap_or("?"),
        s["data_nodes"].as_u64().unwrap_or(0)
    );
    let twins: Vec<&str> =
        s["share"]["connectors"].as_array().into_iter().flatten().filter_map(|c| c.as_str()).collect();
    out.push_str(&format!(
        "ships {} partitions; live connectors of the datacenter: {}\n",
        s["share"]["partitions_owned"].as_u64().unwrap_or(0),
        if twins.is_empty() { "-".to_string() } else { twins.join(", ") }
    ));
    out.push_str(&format!(
        "{:<10} {:<8} {:>10} {:>12} {:>9} {:>12} {:>12}  {}\n",
        "REMOTE", "LINK", "LAG_S", "LAG_RECORDS", "RTT_MS", "SENT_BYTES", "RECV_BYTES", "LAST_ERROR"
    ));
    for l in s["links"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<10} {:<8} {:>10.1} {:>12} {:>9.1} {:>12} {:>12}  {}\n",
            l["remote"].as_str().unwrap_or("?"),
            l["link"].as_str().unwrap_or("?"),
            l["lag_seconds"].as_f64().unwrap_or(0.0),
            l["lag_records"].as_u64().unwrap_or(0),
            l["rtt_ms"].as_f64().unwrap_or(0.0),
            l["sent_bytes"].as_u64().unwrap_or(0),
            l["received_bytes"].as_u64().unwrap_or(0),
            l["last_error"]["error"].as_str().unwrap_or("-"),
        ));
    }
    out
}
