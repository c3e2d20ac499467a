//! The Prometheus registry and the typed handles the hot paths use.
//!
//! Handles are resolved once (per command at start-up), so recording a command costs two
//! atomic adds and a bucket search, never a label lookup.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Latency buckets in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0,
];

/// Every `kind` label of `opencluster_errors_total`.
pub const ERROR_KINDS: &[&str] = &[
    "unknown_command",
    "arity",
    "auth",
    "noproto",
    "syntax",
    "value",
    "limit",
    "disabled",
    "unsupported",
    "protocol",
    "store",
    "durability",
    "cluster",
    "home",
];

pub struct Metrics {
    pub registry: Registry,
    commands: IntCounterVec,
    command_duration: HistogramVec,
    pub errors: IntCounterVec,
    pub connected_clients: IntGauge,
    pub connections_total: IntCounter,
    pub rejected_connections: IntCounter,
    pub keys: IntGauge,
    pub expiring_keys: IntGauge,
    pub tombstones: IntGauge,
    pub bytes_on_disk: IntGauge,
    pub purged_total: IntCounter,
    pub tombstones_held_total: IntCounter,
    pub tombstones_unshipped_purged_total: IntCounter,
    pub flush_failures: IntCounter,
    pub write_buffer_bytes: IntGauge,
    pub write_buffer_records: IntGauge,
    pub insecure_default_keys: IntGauge,
    pub gossip: crate::membership::runtime::GossipMetrics,
    pub rpc: crate::peer::RpcMetrics,
    pub cluster: crate::cluster::ClusterMetrics,
    pub cache: crate::cluster::CacheMetrics,
    pub keyring: crate::membership::keyring::KeyringMetrics,
    pub memory: crate::memory::MemoryMetrics,
}

/// The per-command handles.
#[derive(Clone)]
pub struct CommandMetrics {
    pub calls: IntCounter,
    pub duration: Histogram,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let queues = crate::queue::register_depths(&r);
        let gauge = |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid gauge"));
        let m = Metrics {
            commands: register(
                &r,
                IntCounterVec::new(
                    Opts::new("opencluster_commands_total", "Client commands executed, by command"),
                    &["command"],
                )
                .expect("valid counter"),
            ),
            command_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "opencluster_command_duration_seconds",
                        "Time to execute a client command, by command",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["command"],
                )
                .expect("valid histogram"),
            ),
            errors: register(
                &r,
                IntCounterVec::new(
                    Opts::new("opencluster_errors_total", "Error replies and failures, by kind"),
                    &["kind"],
                )
                .expect("valid counter"),
            ),
            connected_clients: gauge("opencluster_connected_clients", "Client connections open now"),
            connections_total: register(
                &r,
                IntCounter::new("opencluster_connections_total", "Client connections accepted")
                    .expect("valid counter"),
            ),
            rejected_connections: register(
                &r,
                IntCounter::new(
                    "opencluster_rejected_connections_total",
                    "Client connections refused at limits.max_clients",
                )
                .expect("valid counter"),
            ),
            keys: gauge("opencluster_keys", "Keys holding a value (expired ones until purged)"),
            expiring_keys: gauge("opencluster_expiring_keys", "Keys with an expiry"),
            tombstones: gauge("opencluster_tombstones", "Deleted keys kept until their grace period ends"),
            bytes_on_disk: gauge("opencluster_store_bytes_on_disk", "Bytes the store's files take on disk"),
            purged_total: register(
                &r,
                IntCounter::new(
                    "opencluster_purged_records_total",
                    "Expired values and old tombstones removed from disk",
                )
                .expect("valid counter"),
            ),
            tombstones_held_total: register(
                &r,
                IntCounter::new(
                    "opencluster_tombstones_held_total",
                    "Times a tombstone past its grace was kept because a remote datacenter's connector had not shipped it yet",
                )
                .expect("valid counter"),
            ),
            tombstones_unshipped_purged_total: register(
                &r,
                IntCounter::new(
                    "opencluster_tombstones_unshipped_purged_total",
                    "Tombstones purged after store.tombstone_hold although a remote datacenter had not got them (it may keep those keys)",
                )
                .expect("valid counter"),
            ),
            flush_failures: register(
                &r,
                IntCounter::new("opencluster_store_flush_failures_total", "Store flushes that failed")
                    .expect("valid counter"),
            ),
            write_buffer_bytes: gauge(
                "opencluster_write_buffer_bytes",
                "Written records not yet applied to the storage engine, in bytes",
            ),
            write_buffer_records: gauge(
                "opencluster_write_buffer_records",
                "Written records not yet applied to the storage engine",
            ),
            insecure_default_keys: gauge(
                "opencluster_insecure_default_keys",
                "1 when the node runs with the well-known INSECURE default keys",
            ),
            gossip: crate::membership::runtime::GossipMetrics {
                dropped: register(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "opencluster_gossip_packets_dropped_total",
                            "Gossip packets dropped, by reason (authentication, unknown_key, replayed, ...)",
                        ),
                        &["reason"],
                    )
                    .expect("valid counter"),
                ),
                packets: register(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "opencluster_gossip_packets_total",
                            "Gossip packets, by direction (sent, received)",
                        ),
                        &["direction"],
                    )
                    .expect("valid counter"),
                ),
                members: register(
                    &r,
                    IntGaugeVec::new(
                        Opts::new(
                            "opencluster_members",
                            "Cluster members this node knows, by state, itself included",
                        ),
                        &["state"],
                    )
                    .expect("valid gauge"),
                ),
            },
            rpc: crate::peer::RpcMetrics::register(
                &r,
                queues.with_label_values(&[crate::queue::PEER_REQUESTS]),
            ),
            cluster: crate::cluster::ClusterMetrics::register(&r, &queues),
            cache: crate::cluster::CacheMetrics::register(&r),
            keyring: crate::membership::keyring::KeyringMetrics {
                changes: register(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "opencluster_gossip_keyring_changes_total",
                            "Changes made to the gossip keyring through the admin API, by operation (install, use, remove)",
                        ),
                        &["op"],
                    )
                    .expect("valid counter"),
                ),
                keys: gauge("opencluster_gossip_keyring_keys", "Keys installed in the gossip keyring"),
            },
            memory: crate::memory::MemoryMetrics::register(&r),
            registry: r,
        };
        // Error kinds are listed at zero from the start, so dashboards see them before the
        // first error.
        for kind in ERROR_KINDS {
            m.errors.with_label_values(&[kind]);
        }
        m
    }

    /// Sets a counter that mirrors a total kept elsewhere (it only ever grows).
    pub fn mirror(counter: &IntCounter, total: u64) {
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// Handles for one command, by its lower-case name.
    pub fn command(&self, name: &str) -> CommandMetrics {
        CommandMetrics {
            calls: self.commands.with_label_values(&[name]),
            duration: self.command_duration.with_label_values(&[name]),
        }
    }

    pub fn error(&self, kind: &str) {
        debug_assert!(ERROR_KINDS.contains(&kind), "error kind {kind:?} is missing from ERROR_KINDS");
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("encoding to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident memory of this process, from `/proc/self/statm` (0 where unavailable).
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_command_counters_and_latency() {
        let m = Metrics::new();
        let get = m.command("get");
        get.calls.inc();
        get.duration.observe(0.000_2);
        m.error("syntax");
        let text = m.render();
        assert!(text.contains("opencluster_commands_total{command=\"get\"} 1"), "{text}");
        assert!(
            text.contains("opencluster_command_duration_seconds_bucket{command=\"get\",le=\"0.00025\"} 1")
        );
        assert!(text.contains("opencluster_errors_total{kind=\"syntax\"} 1"));
    }
}
