//! The other end of the admin API, for the command line: `opencluster-node health` (a
//! container HEALTHCHECK; a scratch image has no curl) and `opencluster-node members`.
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

/// The members as an aligned table, as `opencluster-node members` prints it: one line per
/// member, this node first as the API lists it.
pub fn members_table(members: &[Value]) -> String {
    const HEADER: [&str; 7] = ["Name", "Address", "Status", "Role", "Datacenter", "Version", "Id"];
    const FIELDS: [&str; 7] = ["name", "gossip_addr", "state", "role", "datacenter", "version", "id"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
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
    fn the_table_is_aligned_with_a_header() {
        let members = [
            json!({"name": "n1", "id": "00000000000000aa", "datacenter": "dc1", "role": "node", "state": "alive",
                   "gossip_addr": "10.0.0.4:7946", "client_addr": "10.0.0.4:6379", "version": "0.1.0", "self": true}),
            json!({"name": "node-two", "id": "00000000000000bb", "datacenter": "dc1", "role": "node",
                   "state": "left", "gossip_addr": null, "version": "0.1.0", "self": false}),
        ];
        let table = members_table(&members);
        assert_eq!(
            table,
            "Name      Address        Status  Role  Datacenter  Version  Id\n\
             n1        10.0.0.4:7946  alive   node  dc1         0.1.0    00000000000000aa\n\
             node-two  -              left    node  dc1         0.1.0    00000000000000bb\n"
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
