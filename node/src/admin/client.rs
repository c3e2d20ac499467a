//! The other end of the admin API, for the command line: `opencluster-node health` (a
//! container HEALTHCHECK; a scratch image has no curl; `--ready` for readiness),
//! `status` and `members`.
//!
//! One HTTP/1.0 request per connection, read to the end: the admin API is local and small,
//! and a client crate would add build time and hide nothing worth hiding.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read.
const MAX_RESPONSE: u64 = 4 << 20;

/// Why a request to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {addr}: {source} (is the node running, and is --admin-addr its admin_addr?)"
    )]
    Unreachable { addr: SocketAddr, source: std::io::Error },
    #[error("no answer from the admin API at {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the node at {addr} is not healthy: {response}")]
    Unhealthy { addr: SocketAddr, response: String },
    #[error("the node at {addr} is not ready: {response}")]
    NotReady { addr: SocketAddr, response: String },
    #[error("GET {path} at {addr} failed: {response}")]
    Status { addr: SocketAddr, path: &'static str, response: String },
    #[error("GET {path} at {addr} did not answer the expected JSON: {message}")]
    Json { addr: SocketAddr, path: &'static str, message: String },
}

/// `GET path` on `addr`: the status code and the body.
async fn get(addr: SocketAddr, path: &'static str, timeout: Duration) -> Result<(u16, String), ClientError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout { addr, timeout })?
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if code == 200 {
        Ok((code, body.to_string()))
    } else {
        Err(ClientError::Status { addr, path, response: format!("{status_line} {body}").trim().to_string() })
    }
}

/// Asks the node at `addr` for `/v1/health`; Ok with the body when it answers 200.
pub async fn check_health(addr: SocketAddr, timeout: Duration) -> Result<String, ClientError> {
    match get(addr, "/v1/health", timeout).await {
        Ok((_, body)) => Ok(body),
        Err(ClientError::Status { response, .. }) => Err(ClientError::Unhealthy { addr, response }),
        Err(e) => Err(e),
    }
}

/// Asks the node at `addr` for `/v1/ready`; Ok with the body when it answers 200.
pub async fn check_ready(addr: SocketAddr, timeout: Duration) -> Result<String, ClientError> {
    match get(addr, "/v1/ready", timeout).await {
        Ok((_, body)) => Ok(body),
        Err(ClientError::Status { response, .. }) => Err(ClientError::NotReady { addr, response }),
        Err(e) => Err(e),
    }
}

/// The node's `/v1/members` list.
pub async fn get_members(addr: SocketAddr, timeout: Duration) -> Result<Vec<Value>, ClientError> {
    const PATH: &str = "/v1/members";
    let (_, body) = get(addr, PATH, timeout).await?;
    let json = |message: String| ClientError::Json { addr, path: PATH, message };
    match serde_json::from_str(&body).map_err(|e| json(e.to_string()))? {
        Value::Array(list) => Ok(list),
        other => Err(json(format!("not a list: {other}"))),
    }
}

/// The node's `/v1/status`.
pub async fn get_status(addr: SocketAddr, timeout: Duration) -> Result<Value, ClientError> {
    const PATH: &str = "/v1/status";
    let (_, body) = get(addr, PATH, timeout).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Json { addr, path: PATH, message: e.to_string() })
}

/// `/v1/status` as `opencluster-node status` prints it: a few lines for people, the
/// rebalance worker as a progress bar while it runs.
pub fn status_text(s: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = format!(
        "node      {} ({}), datacenter {}, version {}, up {}s\n",
        s["node"].as_str().unwrap_or("?"),
        s["node_id"].as_str().unwrap_or("?"),
        s["datacenter"].as_str().unwrap_or("?"),
        s["version"].as_str().unwrap_or("?"),
        n(&s["uptime_seconds"]),
    );
    let waiting: Vec<&str> =
        s["ready"]["waiting_for"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out += &match (s["ready"]["ready"].as_bool(), waiting.is_empty()) {
        (Some(true), _) => "ready     yes\n".to_string(),
        (Some(false), false) => format!("ready     no: {}\n", waiting.join("; ")),
        _ => "ready     unknown\n".to_string(),
    };
    let m = &s["members"];
    out += &format!(
        "members   {} alive, {} suspect, {} down, {} left\n",
        n(&m["alive"]),
        n(&m["suspect"]),
        n(&m["down"]),
        n(&m["left"])
    );
    let p = &s["placement"];
    out += &format!(
        "placement {} nodes; owns {} of {} partitions, primary of {}; {} of {} replicas, write quorum {}: {}\n",
        n(&p["nodes"]),
        n(&p["owned"]),
        n(&p["partitions"]),
        n(&p["primary"]),
        n(&p["owners_per_partition"]),
        n(&p["replicas_configured"]),
        n(&p["write_quorum"]),
        p["replica_health"].as_str().unwrap_or("?"),
    );
    out += &format!(
        "store     {} keys, {} bytes on disk\n",
        n(&s["store"]["keys"]),
        n(&s["store"]["bytes_on_disk"])
    );
    for w in s["workers"].as_array().into_iter().flatten() {
        match w["name"].as_str() {
            Some("rebalance") => out += &rebalance_line(w),
            Some("handoff") => {
                out += &format!(
                    "handoff   {} records pending, {} delivered, {} dropped\n",
                    n(&w["records_pending"]),
                    n(&w["records_delivered"]),
                    n(&w["records_dropped"])
                )
            }
            Some("repair") => {
                out += &format!(
                    "repair    {}; {} rounds, {} partitions repaired, {} keys fetched, {} pushed; {} partitions handed over, {} keys removed\n",
                    w["state"].as_str().unwrap_or("?"),
                    n(&w["rounds"]),
                    n(&w["partitions_repaired"]),
                    n(&w["keys_fetched"]),
                    n(&w["keys_pushed"]),
                    n(&w["partitions_handed_over"]),
                    n(&w["keys_removed"])
                )
            }
            _ => {}
        }
    }
    out
}

/// `rebalance idle` or a progress bar of this round's partitions with the time left.
fn rebalance_line(w: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let (done, left) =
        (n(&w["round_partitions_done"]), n(&w["partitions_pending"]) + n(&w["partitions_active"]));
    let moved = format!("{} keys, {} bytes moved in all", n(&w["keys_moved"]), n(&w["bytes_moved"]));
    if left == 0 {
        return format!("rebalance idle; {moved}\n");
    }
    const WIDTH: u64 = 30;
    let total = done + left;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0) as usize;
    let eta =
        w["eta_seconds"].as_u64().map_or_else(|| "estimating".to_string(), |s| format!("about {s}s left"));
    format!(
        "rebalance [{}{}] {done}/{total} partitions, {eta}; {moved}\n",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled)
    )
}

/// The members as an aligned table, as `opencluster-node members` prints it: one line per
/// member, this node first as the API lists it.
pub fn members_table(members: &[Value]) -> String {
    const HEADER: [&str; 8] = ["Name", "Address", "Status", "Data", "Role", "Datacenter", "Version", "Id"];
    const FIELDS: [&str; 8] =
        ["name", "gossip_addr", "state", "placed", "role", "datacenter", "version", "id"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Bool(placed) => if *placed { "yes" } else { "no" }.to_string(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = std::iter::once(HEADER.map(String::from).to_vec())
        .chain(members.iter().map(|m| FIELDS.iter().map(|f| text(&m[*f])).collect()))
        .collect();
    let widths: Vec<usize> =
        (0..HEADER.len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_shows_rebalance_progress_as_a_bar() {
        let running = json!({"name": "rebalance", "round_partitions_done": 10, "partitions_pending": 28,
                             "partitions_active": 2, "eta_seconds": 12, "keys_moved": 500, "bytes_moved": 9000});
        assert_eq!(
            rebalance_line(&running),
            "rebalance [#######-----------------------] 10/40 partitions, about 12s left; 500 keys, 9000 bytes moved in all\n"
        );
        let idle = json!({"name": "rebalance", "round_partitions_done": 0, "partitions_pending": 0,
                          "partitions_active": 0, "eta_seconds": null, "keys_moved": 0, "bytes_moved": 0});
        assert_eq!(rebalance_line(&idle), "rebalance idle; 0 keys, 0 bytes moved in all\n");
        let status = json!({"node": "n1", "node_id": "aa", "datacenter": "dc1", "version": "0.1.0",
            "uptime_seconds": 5, "members": {"alive": 3, "suspect": 0, "down": 0, "left": 0},
            "placement": {"nodes": 3, "owned": 1024, "partitions": 1024, "primary": 341,
                          "owners_per_partition": 3, "replicas_configured": 3, "write_quorum": 2, "replica_health": "full"},
            "store": {"keys": 7, "bytes_on_disk": 100}, "workers": [running],
            "ready": {"ready": false, "waiting_for": ["rebalance: 30 partitions to copy from their other owners"]}});
        let text = status_text(&status);
        assert!(
            text.contains("\nready     no: rebalance: 30 partitions to copy from their other owners\n"),
            "{text}"
        );
        assert!(text.starts_with("node      n1 (aa), datacenter dc1, version 0.1.0, up 5s\n"), "{text}");
        assert!(text.contains("members   3 alive, 0 suspect, 0 down, 0 left\n"), "{text}");
        assert!(
            text.contains(
                "owns 1024 of 1024 partitions, primary of 341; 3 of 3 replicas, write quorum 2: full"
            ),
            "{text}"
        );
        assert!(text.contains("rebalance [#######"), "{text}");
    }

    #[test]
    fn the_table_is_aligned_with_a_header() {
        let members = [
            json!({"name": "n1", "id": "00000000000000aa", "datacenter": "dc1", "role": "node", "state": "alive",
                   "gossip_addr": "10.0.0.4:7946", "client_addr": "10.0.0.4:6379", "version": "0.1.0", "self": true,
                   "placed": true}),
            json!({"name": "node-two", "id": "00000000000000bb", "datacenter": "dc1", "role": "node",
                   "state": "left", "gossip_addr": null, "version": "0.1.0", "self": false, "placed": false}),
        ];
        let table = members_table(&members);
        assert_eq!(
            table,
            "Name      Address        Status  Data  Role  Datacenter  Version  Id\n\
             n1        10.0.0.4:7946  alive   yes   node  dc1         0.1.0    00000000000000aa\n\
             node-two  -              left    no    node  dc1         0.1.0    00000000000000bb\n"
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = get_members(addr, Duration::from_secs(2)).await.unwrap_err().to_string();
        assert!(e.contains(&format!("cannot reach the admin API at {addr}")), "{e}");
    }
}
