//! The cluster's Prometheus metrics: what the read, write, replication and background
//! paths count, registered once at startup and shared by every part of the cluster module.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::queue;

/// Cluster metrics.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// `opencluster_forwarded_total{op}`: reads and writes this node sent to other owners.
    pub forwarded: IntCounterVec,
    /// `opencluster_replication_total{outcome}`: writes this node executed as primary, by
    /// whether their quorum was met.
    pub replication: IntCounterVec,
    /// `opencluster_replicated_records_total{direction}`: records copied to (sent) or from
    /// (received) other owners.
    pub replicated_records: IntCounterVec,
    /// `opencluster_read_repairs_total`: records sent to owners a read found behind.
    pub read_repairs: IntCounter,
    /// `opencluster_rebalance_bytes_total`: bytes of records copied in by rebalance.
    pub rebalance_bytes: IntCounter,
    /// `opencluster_rebalance_failures_total`: partition copies that failed and were retried.
    pub rebalance_failures: IntCounter,
    /// `opencluster_repair_rounds_total`: anti-entropy rounds finished.
    pub repair_rounds: IntCounter,
    /// `opencluster_repair_keys_total{direction}`: records anti-entropy fetched, pushed or
    /// removed once handed over.
    pub repair_keys: IntCounterVec,
    /// `opencluster_hints_pending`: copies kept for owners that did not answer.
    pub hints_pending: prometheus::IntGauge,
    /// `opencluster_hints_delivered_total`.
    pub hints_delivered: IntCounter,
    /// `opencluster_hints_dropped_total`: hints dropped beyond `cluster.max_hint_bytes`.
    pub hints_dropped: IntCounter,
    /// `opencluster_queue_depth{queue="replica_acks"}`: answers of replica copies that
    /// primaries have not taken yet.
    pub replica_acks_depth: IntGauge,
    /// `opencluster_queue_depth{queue="rebalance_tasks"}`: partitions queued for the
    /// rebalance worker and not yet taken by it.
    pub rebalance_depth: IntGauge,
}

impl ClusterMetrics {
    /// Registers the cluster's metrics in `r`; its queues' depths are gauges of `queues`
    /// (`opencluster_queue_depth`, [`crate::queue::register_depths`]).
    pub fn register(r: &Registry, queues: &IntGaugeVec) -> Self {
        let counter = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            for v in values {
                c.with_label_values(&[v]);
            }
            c
        };
        let read_repairs = IntCounter::new(
            "opencluster_read_repairs_total",
            "Records copied to owners that a read found holding an older version (or none)",
        )
        .expect("valid counter");
        r.register(Box::new(read_repairs.clone())).expect("metric names are unique");
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let hints_pending = prometheus::IntGauge::new(
            "opencluster_hints_pending",
            "Copies kept for owners that did not answer",
        )
        .expect("valid gauge");
        r.register(Box::new(hints_pending.clone())).expect("metric names are unique");
        ClusterMetrics {
            replica_acks_depth: queues.with_label_values(&[queue::REPLICA_ACKS]),
            rebalance_depth: queues.with_label_values(&[queue::REBALANCE_TASKS]),
            hints_pending,
            hints_delivered: plain(
                "opencluster_hints_delivered_total",
                "Kept copies delivered to their owner once it answered again",
            ),
            hints_dropped: plain(
                "opencluster_hints_dropped_total",
                "Kept copies dropped because cluster.max_hint_bytes was full",
            ),
            rebalance_bytes: plain(
                "opencluster_rebalance_bytes_total",
                "Bytes of records this node copied in from other owners for partitions it gained",
            ),
            rebalance_failures: plain(
                "opencluster_rebalance_failures_total",
                "Partition copies that failed (every source unreachable) and were queued again",
            ),
            repair_rounds: plain("opencluster_repair_rounds_total", "Anti-entropy rounds this node finished"),
            repair_keys: counter(
                "opencluster_repair_keys_total",
                "Records anti-entropy copied from other owners (fetched) or to them (pushed), and records of partitions handed over to their owners and removed here (removed)",
                "direction",
                &["fetched", "pushed", "removed"],
            ),
            read_repairs,
            forwarded: counter(
                "opencluster_forwarded_total",
                "Reads and writes sent to the owners of their keys, by operation",
                "op",
                &["read", "write", "scan"],
            ),
            replication: counter(
                "opencluster_replication_total",
                "Writes executed as a partition's primary, by whether the write quorum was met",
                "outcome",
                &["quorum_met", "quorum_missed"],
            ),
            replicated_records: counter(
                "opencluster_replicated_records_total",
                "Records copied to other owners (sent) or from them (received)",
                "direction",
                &["sent", "received"],
            ),
        }
    }
}
