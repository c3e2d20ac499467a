//! One client connection: read, decode every complete request, execute, write the
//! replies in one go.
//!
//! Replies to pipelined requests are batched into one write. Memory per connection is
//! bounded: a request larger than `limits.max_request_bytes` closes the connection,
//! oversized values are discarded by the decoder as they stream in, and replies are
//! written out whenever the buffer passes [`FLUSH_AT`], so a client that pipelines many
//! large GETs is served at the pace it reads.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::codec::{self, DecodeLimits, Decoder, Protocol};
use super::commands::{self, Flow, Session};
use super::outbox::Outbox;
use super::server::{ClientSlot, ServerState};

/// Replies are written out once this many bytes are buffered.
const FLUSH_AT: usize = 64 << 10;
/// Read buffer growth step, and the capacity buffers shrink back to when idle.
const BUF_SIZE: usize = 16 << 10;

/// Serves one client. `trusted` connections (the Unix socket, guarded by its file mode)
/// need no password.
pub async fn serve<S>(
    state: Arc<ServerState>,
    slot: ClientSlot,
    mut stream: S,
    peer: String,
    trusted: bool,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = state.limits;
    let outbox = state.hub.connect(slot.id);
    let mut session = Session {
        id: slot.id,
        protocol: Protocol::Resp2,
        authenticated: trusted || state.password.is_none(),
        name: None,
        lib_name: None,
        lib_version: None,
        peer,
        connected_at: Instant::now(),
        outbox: outbox.clone(),
        subscriptions: 0,
        tracking: None,
        caching: None,
    };
    let mut decoder = Decoder::new(DecodeLimits {
        max_bulk_bytes: limits.max_value_bytes.max(limits.max_key_bytes),
        max_protocol_bulk_bytes: 512 << 20,
        max_args: 1 << 20,
        max_inline_bytes: 64 << 10,
    });
    let mut input = BytesMut::with_capacity(BUF_SIZE);
    let mut out = BytesMut::with_capacity(BUF_SIZE);
    let result: std::io::Result<()> = async {
        loop {
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(request)) => {
                        if commands::execute(&state, &mut session, request, &mut out).await == Flow::Close {
                            send(&mut stream, &out, &outbox).await?;
                            return Ok(());
                        }
                        if out.len() >= FLUSH_AT {
                            send(&mut stream, &out, &outbox).await?;
                            out.clear();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        state.metrics.error("protocol");
                        codec::write_error(&mut out, &format!("ERR {e}"));
                        send(&mut stream, &out, &outbox).await?;
                        tracing::debug!(peer = %session.peer, error = %e, "closing a client connection after a protocol error");
                        return Ok(());
                    }
                }
            }
            // Messages and invalidations queued meanwhile go out with the replies.
            outbox.drain_into(&mut out);
            if outbox.overflowed() {
                return Ok(());
            }
            if !out.is_empty() {
                send(&mut stream, &out, &outbox).await?;
                out.clear();
                shrink(&mut out);
            }
            if input.len() + decoder.held_bytes() > limits.max_request_bytes {
                state.metrics.error("limit");
                codec::write_error(
                    &mut out,
                    &format!("ERR request too large (limits.max_request_bytes is {})", limits.max_request_bytes),
                );
                send(&mut stream, &out, &outbox).await?;
                return Ok(());
            }
            if input.is_empty() {
                shrink(&mut input);
            }
            input.reserve(BUF_SIZE);
            let n = tokio::select! {
                n = stream.read_buf(&mut input) => n?,
                _ = outbox.ready() => continue,
                _ = shutdown.cancelled() => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(peer = %session.peer, error = %e, "client connection ended with an I/O error");
    }
    state.hub.disconnect(slot.id);
    drop(slot);
}

/// Writes `out`, unless the client goes over its output limits meanwhile (a subscriber
/// that stopped reading blocks this write forever): then the connection ends.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8], outbox: &Outbox) -> std::io::Result<()> {
    tokio::select! {
        r = stream.write_all(out) => r,
        _ = outbox.cut_off() => Err(std::io::Error::other("over the pub/sub output limits")),
    }
}

/// Gives back memory a large request or reply left behind.
fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * BUF_SIZE {
        *buf = BytesMut::with_capacity(BUF_SIZE);
    }
}
