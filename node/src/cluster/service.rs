//! The other side of forwarding: what this node answers when a peer sends it a request.

use std::sync::Arc;

use bytes::Bytes;

use super::messages::{self, WireRecord, WriteOutcome};
use super::outbound::{Outbound, OutboundError};
use super::{Cluster, DataError};
use crate::peer::messages::{Kind, Ping, Refusal};
use crate::peer::{BoxFuture, Handler, answer, refused};
use crate::record::Record;

/// The most bytes of keys and values a [`messages::Pull`] chunk may ask for (one larger
/// record still comes alone): well under the smallest peer message limit.
pub const MAX_PULL_BYTES: usize = crate::config::MAX_CHUNK_BYTES as usize;

/// The longest a node holds a [`messages::Follow`] with nothing to answer.
pub const MAX_FOLLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a node whose store has no change signal looks at its heads while it holds
/// a [`messages::Follow`].
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Test hook: `OPENCLUSTER_TEST_REFUSE_KINDS` lists kinds (by their metric label, comma
/// separated) that the node refuses as unknown, the way a node that predates them does,
/// so tests can show their callers fall back: a connector still reads a node without
/// `follow` (with `Positions` and `Changes`), a new owner still copies from a node
/// without `pull_after` (with `Pull`).
fn refuses_for_test(kind: Kind) -> bool {
    static LISTED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LISTED
        .get_or_init(|| {
            let listed = std::env::var("OPENCLUSTER_TEST_REFUSE_KINDS").unwrap_or_default();
            listed.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect()
        })
        .iter()
        .any(|k| k == kind.as_str())
}

/// Answers a connector's long poll: waits until a partition asked has a number past its
/// cursor (or the wait is over), then reads the partitions in the order asked, off the
/// async workers, until the limits.
async fn follow(
    c: &Cluster,
    outbound: &Outbound,
    m: messages::Follow,
) -> Result<messages::Followed, Refusal> {
    let partitions = c.partitions();
    if m.after.len() > partitions as usize {
        return Err(Refusal::Malformed(format!("{} partitions followed, of {partitions}", m.after.len())));
    }
    if let Some((p, _)) = m.after.iter().find(|(p, _)| *p >= partitions) {
        return Err(Refusal::Malformed(format!("no partition {p}")));
    }
    let store = c.local.store.clone();
    let moved = || m.after.iter().any(|&(p, after)| store.last_seq(p) > after);
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(u64::from(m.wait_ms)).min(MAX_FOLLOW_WAIT);
    match store.change_signal() {
        Some(signal) => {
            signal.wait_until(moved, deadline).await;
        }
        None => {
            while !moved() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + FOLLOW_POLL)).await;
            }
        }
    }
    let limit = (m.limit as usize).clamp(1, 100_000);
    let max_bytes = (m.max_bytes as usize).clamp(1, MAX_PULL_BYTES);
    let (heads, read) = tokio::task::spawn_blocking(move || {
        let heads: Vec<u64> = m.after.iter().map(|&(p, _)| store.last_seq(p)).collect();
        let (mut records, mut bytes) = (0, 0);
        let mut read = Vec::new();
        for (&(p, after), &head) in m.after.iter().zip(&heads) {
            if head <= after {
                continue;
            }
            if records >= limit || bytes >= max_bytes {
                break;
            }
            let chunk = store.changes_after(p, after, limit - records, max_bytes - bytes)?;
            records += chunk.records.len();
            bytes += chunk.records.iter().map(|(_, k, r)| crate::store::chunk_bytes(k, r)).sum::<usize>();
            read.push((p, chunk));
        }
        Ok::<_, crate::store::StoreError>((heads, read))
    })
    .await
    .map_err(|e| Refusal::Store(e.to_string()))?
    .map_err(|e| refusal(e.into()))?;
    let chunks = read
        .into_iter()
        .map(|(partition, chunk)| messages::FollowedChunk {
            partition,
            // Local keyspaces are passed over here, not in the connector: their bytes
            // never leave the node (the cursor still moves past them).
            records: chunk
                .records
                .iter()
                .filter(|(_, k, r)| *r.origin.datacenter == *m.origin && !outbound.is_local(k))
                .map(|(seq, k, r)| (*seq, k.clone(), WireRecord::new(r)))
                .collect(),
            upto: chunk.upto,
            more: chunk.more,
        })
        .collect();
    Ok(messages::Followed { heads, chunks })
}

/// Answers peers' requests from this node's [`Cluster`], and its connectors' from there
/// and from what it keeps for them ([`Outbound`]).
pub struct Service {
    cluster: Arc<Cluster>,
    outbound: Arc<Outbound>,
}

impl Service {
    pub fn new(cluster: Arc<Cluster>, outbound: Arc<Outbound>) -> Arc<Self> {
        Arc::new(Service { cluster, outbound })
    }
}

fn outbound_refusal(e: OutboundError) -> Refusal {
    match e {
        OutboundError::Invalid(reason) => Refusal::Malformed(reason),
        e => Refusal::Store(e.to_string()),
    }
}

/// The typed code a failure travels as.
fn refusal(e: DataError) -> Refusal {
    match e {
        DataError::Unavailable(reason) | DataError::HomeUnavailable(reason) => Refusal::Unavailable(reason),
        DataError::QuorumMissed { acks, required } => Refusal::QuorumMissed {
            acks: u32::try_from(acks).unwrap_or(u32::MAX),
            required: u32::try_from(required).unwrap_or(u32::MAX),
        },
        e => Refusal::Store(e.to_string()),
    }
}

/// A chunk of a partition's change sequence after `after`, read off the async workers, with
/// the asker's limits held within bounds: for `PullAfter` (rebalance) and `Changes` (the
/// connector's cursor).
async fn read_after(
    c: &Cluster,
    partition: crate::placement::Partition,
    after: u64,
    limit: u32,
    max_bytes: u32,
) -> Result<crate::store::Sequenced, Refusal> {
    if partition >= c.partitions() {
        return Err(Refusal::Malformed(format!("no partition {partition}")));
    }
    let limit = (limit as usize).clamp(1, 100_000);
    let max_bytes = (max_bytes as usize).clamp(1, MAX_PULL_BYTES);
    let store = c.local.store.clone();
    tokio::task::spawn_blocking(move || store.changes_after(partition, after, limit, max_bytes))
        .await
        .map_err(|e| Refusal::Store(e.to_string()))?
        .map_err(|e| refusal(e.into()))
}

fn wire(records: &[(Bytes, Record)]) -> Vec<(Bytes, WireRecord)> {
    records.iter().map(|(k, r)| (k.clone(), WireRecord::new(r))).collect()
}

impl Handler for Service {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        let c = &self.cluster;
        let outbound = &self.outbound;
        Box::pin(async move {
            match kind {
                _ if refuses_for_test(kind) => refused(Refusal::UnknownKind(kind as u8)),
                // The peer layer unpacks batches before they get here.
                Kind::Batch => refused(Refusal::Malformed("nested batch".into())),
                Kind::Ping => answer(&body, |_: Ping| async { Ok(c.node.0) }).await,
                Kind::Read => {
                    answer(&body, |m: messages::Read| async move {
                        let records = c.local.read(&m.keys).map_err(|e| refusal(e.into()))?;
                        Ok(records.iter().map(|r| r.as_ref().map(WireRecord::new)).collect())
                    })
                    .await
                }
                Kind::Write => {
                    answer(&body, |m: messages::Write| async move {
                        // A primary that cannot reach the owners it knows would be the only
                        // one to hold the write: refused before anything is applied.
                        if let Some(why) = c.not_joined() {
                            return Err(Refusal::NotJoined(why));
                        }
                        let view = c.view();
                        match c.local.execute(&m.ops).await.map_err(refusal)? {
                            super::Executed::Conflict(current) => Ok(WriteOutcome::Conflict {
                                current: current.iter().map(|r| r.as_ref().map(WireRecord::new)).collect(),
                            }),
                            super::Executed::Written(written) => {
                                c.note_stored(written.iter().map(|(k, _)| &k[..]));
                                let count = written.len() as u32;
                                let wait = std::time::Duration::from_millis(u64::from(m.budget_ms));
                                let acks = c
                                    .replicate(&view, written, m.quorum as usize, wait)
                                    .await
                                    .map_err(refusal)?;
                                Ok(WriteOutcome::Written { written: count, acks: acks as u32 })
                            }
                        }
                    })
                    .await
                }
                Kind::Replicate => {
                    answer(&body, |m: messages::Replicate| async move {
                        let records = m
                            .records
                            .iter()
                            .map(|(k, w)| w.decode().map(|r| (k.clone(), r)))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| Refusal::Malformed(e.to_string()))?;
                        c.metrics
                            .replicated_records
                            .with_label_values(&["received"])
                            .inc_by(records.len() as u64);
                        c.local.apply(&records).await.map_err(refusal)?;
                        c.note_stored(records.iter().map(|(k, _)| &k[..]));
                        Ok(())
                    })
                    .await
                }
                Kind::LeasedRead => {
                    answer(&body, |m: messages::LeasedRead| async move {
                        c.leased_read(m).map_err(|e| refusal(e.into()))
                    })
                    .await
                }
                Kind::Invalidate => {
                    answer(&body, |m: messages::Invalidate| async move {
                        c.invalidated(m);
                        Ok(())
                    })
                    .await
                }
                Kind::HomeCommand => {
                    answer(&body, |m: messages::HomeCommand| async move {
                        let reply = c.home_command(m).await.map_err(refusal)?;
                        Ok(messages::HomeReply { reply })
                    })
                    .await
                }
                Kind::HomeRead => {
                    answer(
                        &body,
                        |m: messages::HomeRead| async move { c.home_read(m).await.map_err(refusal) },
                    )
                    .await
                }
                Kind::HomeInvalidate => {
                    answer(&body, |m: messages::HomeInvalidate| async move {
                        c.home_invalidated(m);
                        Ok(())
                    })
                    .await
                }
                Kind::WatchPrefixes => {
                    answer(&body, |m: messages::WatchPrefixes| async move {
                        c.watch_prefixes(m);
                        Ok(())
                    })
                    .await
                }
                Kind::Publish => answer(&body, |m: messages::Publish| async move { Ok(c.deliver(&m)) }).await,
                Kind::Channels => {
                    answer(&body, |m: messages::Channels| async move {
                        Ok(c.local_channels(m.pattern.as_deref()))
                    })
                    .await
                }
                Kind::Keys => {
                    answer(&body, |m: messages::Keys| async move {
                        if m.partition >= c.partitions() {
                            return Err(Refusal::Malformed(format!("no partition {}", m.partition)));
                        }
                        c.local
                            .keys(m.partition, m.pattern.as_deref(), m.now_ms)
                            .map_err(|e| refusal(e.into()))
                    })
                    .await
                }
                Kind::Pull => {
                    answer(&body, |m: messages::Pull| async move {
                        if m.partition >= c.partitions() {
                            return Err(Refusal::Malformed(format!("no partition {}", m.partition)));
                        }
                        let since = crate::hlc::Hlc(m.from.0.saturating_sub(1));
                        let limit = (m.limit as usize).clamp(1, 100_000);
                        let max_bytes = (m.max_bytes as usize).clamp(1, MAX_PULL_BYTES);
                        // A chunk can be large: read it off the async workers.
                        let store = c.local.store.clone();
                        let changes = tokio::task::spawn_blocking(move || {
                            store.changes_since(m.partition, since, limit, max_bytes)
                        })
                        .await
                        .map_err(|e| Refusal::Store(e.to_string()))?
                        .map_err(|e| refusal(e.into()))?;
                        Ok(messages::PullChunk { records: wire(&changes.records), next: changes.next })
                    })
                    .await
                }
                Kind::PullAfter => {
                    answer(&body, |m: messages::PullAfter| async move {
                        let chunk = read_after(c, m.partition, m.after, m.limit, m.max_bytes).await?;
                        Ok(messages::PulledAfter {
                            records: chunk
                                .records
                                .iter()
                                .map(|(_, k, r)| (k.clone(), WireRecord::new(r)))
                                .collect(),
                            upto: chunk.upto,
                            more: chunk.more,
                        })
                    })
                    .await
                }
                Kind::Digest => {
                    answer(&body, |m: messages::Digest| async move {
                        if m.partition >= c.partitions() {
                            return Err(Refusal::Malformed(format!("no partition {}", m.partition)));
                        }
                        if c.rebalance_status.busy() {
                            return Ok(messages::DigestAnswer::Copying);
                        }
                        c.local_digest(m.partition, m.horizon)
                            .await
                            .map(messages::DigestAnswer::Buckets)
                            .map_err(refusal)
                    })
                    .await
                }
                Kind::Versions => {
                    answer(&body, |m: messages::Versions| async move {
                        if m.partition >= c.partitions() {
                            return Err(Refusal::Malformed(format!("no partition {}", m.partition)));
                        }
                        if m.buckets.iter().any(|&b| b as usize >= super::repair::BUCKETS) {
                            return Err(Refusal::Malformed("bucket out of range".into()));
                        }
                        let store = c.local.store.clone();
                        tokio::task::spawn_blocking(move || {
                            super::repair::versions(&*store, m.partition, &m.buckets, m.horizon)
                        })
                        .await
                        .map_err(|e| Refusal::Store(e.to_string()))?
                        .map_err(|e| refusal(e.into()))
                    })
                    .await
                }
                // The connectors' messages between datacenters are not a node's to answer.
                Kind::Ship | Kind::ShipPacked | Kind::Compare => refused(Refusal::UnknownKind(kind as u8)),
                Kind::Heads => {
                    answer(&body, |_: messages::Heads| async move {
                        let store = &c.local.store;
                        Ok((0..c.partitions()).map(|p| store.last_seq(p)).collect())
                    })
                    .await
                }
                Kind::Changes => {
                    answer(&body, |m: messages::Changes| async move {
                        let chunk = read_after(c, m.partition, m.after, m.limit, m.max_bytes).await?;
                        let upto = chunk.upto;
                        // Local keyspaces are passed over here, not in the connector: their
                        // bytes never leave the node (the cursor still moves past them).
                        let records = chunk
                            .records
                            .iter()
                            .filter(|(_, k, r)| *r.origin.datacenter == *m.origin && !outbound.is_local(k))
                            .map(|(seq, k, r)| (*seq, k.clone(), WireRecord::new(r)))
                            .collect();
                        Ok(messages::ChangesChunk { records, upto, more: chunk.more })
                    })
                    .await
                }
                Kind::Follow => answer(&body, |m: messages::Follow| follow(c, outbound, m)).await,
                Kind::Positions => {
                    answer(&body, |m: messages::Positions| async move {
                        let store = &c.local.store;
                        let heads: Vec<u64> = (0..c.partitions()).map(|p| store.last_seq(p)).collect();
                        let acked = outbound.positions(&m.remote, &heads).await.map_err(outbound_refusal)?;
                        Ok(messages::PositionsAnswer { heads, acked })
                    })
                    .await
                }
                Kind::Acknowledge => {
                    answer(&body, |m: messages::Acknowledge| async move {
                        outbound.acknowledge(&m.remote, &m.positions).await.map_err(outbound_refusal)
                    })
                    .await
                }
                Kind::Count => {
                    answer(&body, |m: messages::Count| async move {
                        if m.partitions.iter().any(|&p| p >= c.partitions()) {
                            return Err(Refusal::Malformed("partition out of range".into()));
                        }
                        c.local.count(&m.partitions, m.now_ms).map_err(|e| refusal(e.into()))
                    })
                    .await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_quorum_is_refused_with_its_counts() {
        assert_eq!(
            refusal(DataError::QuorumMissed { acks: 1, required: 3 }),
            Refusal::QuorumMissed { acks: 1, required: 3 }
        );
        assert_eq!(refusal(DataError::Unavailable("gone".into())), Refusal::Unavailable("gone".into()));
    }
}
