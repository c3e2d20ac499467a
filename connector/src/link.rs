//! What a connector shows about each remote datacenter: the link's state and last error,
//! lag in seconds and in records, bytes, round-trip time. One [`Link`] per remote, written
//! by its shipper and by the WAN handler, read by `/v1/status` and `/metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Gauge, IntCounter, IntGauge, Opts, Registry};
use serde_json::{Value, json};

/// The metrics of every link, labelled by remote datacenter.
pub struct LinkMetrics {
    up: prometheus::IntGaugeVec,
    lag_seconds: prometheus::GaugeVec,
    lag_records: prometheus::IntGaugeVec,
    rtt_seconds: prometheus::GaugeVec,
    sent_bytes: prometheus::IntCounterVec,
    received_bytes: prometheus::IntCounterVec,
    shipped: prometheus::IntCounterVec,
    applied: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    compared: prometheus::IntCounterVec,
    backstopped: prometheus::IntCounterVec,
}

impl LinkMetrics {
    pub fn register(r: &Registry) -> LinkMetrics {
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone())).expect("metric names are unique");
            m
        }
        let o = |name: &str, help: &str| Opts::new(name, help);
        let l = &["remote"];
        LinkMetrics {
            up: reg(r, prometheus::IntGaugeVec::new(o("opencluster_connector_link_up", "1 while the last exchange with the remote datacenter's connector succeeded"), l).expect("valid")),
            lag_seconds: reg(r, prometheus::GaugeVec::new(o("opencluster_connector_lag_seconds", "Seconds since shipping to the remote datacenter was last caught up (0 when caught up)"), l).expect("valid")),
            lag_records: reg(r, prometheus::IntGaugeVec::new(o("opencluster_connector_lag_records", "Changes of this datacenter's change sequences not yet shipped to the remote (positions; an upper bound of records)"), l).expect("valid")),
            rtt_seconds: reg(r, prometheus::GaugeVec::new(o("opencluster_connector_rtt_seconds", "Time of the last acknowledged batch to the remote datacenter, applying included"), l).expect("valid")),
            sent_bytes: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_sent_bytes_total", "Bytes of keys and values shipped to the remote datacenter, compressed when batches are"), l).expect("valid")),
            received_bytes: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_received_bytes_total", "Bytes of keys and values received from the remote datacenter and applied, compressed when batches were"), l).expect("valid")),
            shipped: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_shipped_records_total", "Records shipped to the remote datacenter and acknowledged"), l).expect("valid")),
            applied: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_applied_records_total", "Records received from the remote datacenter and applied here"), l).expect("valid")),
            errors: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_link_errors_total", "Failed exchanges with the remote datacenter (the batch is sent again)"), l).expect("valid")),
            compared: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_backstop_comparisons_total", "Partitions compared with the remote datacenter by the backstop"), l).expect("valid")),
            backstopped: reg(r, prometheus::IntCounterVec::new(o("opencluster_connector_backstop_shipped_records_total", "Records the backstop found missing or older in the remote datacenter and shipped (0 while the cursors miss nothing)"), l).expect("valid")),
        }
    }
}

/// One remote datacenter as this connector sees it.
pub struct Link {
    pub remote: String,
    /// The remote's connectors as configured (`HOST:PORT`, re-resolved on every dial).
    pub addresses: Vec<String>,
    up: IntGauge,
    lag_seconds: Gauge,
    lag_records: IntGauge,
    rtt_seconds: Gauge,
    sent_bytes: IntCounter,
    received_bytes: IntCounter,
    shipped: IntCounter,
    applied: IntCounter,
    errors: IntCounter,
    compared: IntCounter,
    backstopped: IntCounter,
    state: Mutex<State>,
    /// Set once the remote refused a compressed batch (a connector of an older version):
    /// batches to it go plain from then on.
    pub plain_only: AtomicBool,
}

struct State {
    /// "connecting" until the first exchange, then "up" or "down".
    link: &'static str,
    last_error: Option<(SystemTime, String)>,
    /// When shipping last found nothing left to send.
    caught_up: Option<Instant>,
    started: Instant,
    worker: &'static str,
    /// The address the last acknowledged batch went to.
    current: Option<std::net::SocketAddr>,
}

impl Link {
    pub fn new(remote: &str, addresses: &[String], m: &LinkMetrics) -> Link {
        let l = &[remote];
        Link {
            remote: remote.into(),
            addresses: addresses.to_vec(),
            up: m.up.with_label_values(l),
            lag_seconds: m.lag_seconds.with_label_values(l),
            lag_records: m.lag_records.with_label_values(l),
            rtt_seconds: m.rtt_seconds.with_label_values(l),
            sent_bytes: m.sent_bytes.with_label_values(l),
            received_bytes: m.received_bytes.with_label_values(l),
            shipped: m.shipped.with_label_values(l),
            applied: m.applied.with_label_values(l),
            errors: m.errors.with_label_values(l),
            compared: m.compared.with_label_values(l),
            backstopped: m.backstopped.with_label_values(l),
            state: Mutex::new(State {
                link: "connecting",
                last_error: None,
                caught_up: None,
                started: Instant::now(),
                worker: "starting",
                current: None,
            }),
            plain_only: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch was acknowledged by the connector at `to`.
    pub fn shipped(&self, records: usize, bytes: usize, rtt: Duration, to: std::net::SocketAddr) {
        self.shipped.inc_by(records as u64);
        self.sent_bytes.inc_by(bytes as u64);
        self.rtt_seconds.set(rtt.as_secs_f64());
        self.up.set(1);
        let mut s = self.state();
        s.link = "up";
        s.current = Some(to);
    }

    /// A batch from this remote was applied here: the link works, inbound at least.
    pub fn received(&self, records: usize, bytes: usize) {
        self.applied.inc_by(records as u64);
        self.received_bytes.inc_by(bytes as u64);
        self.up.set(1);
        self.state().link = "up";
    }

    /// An exchange with the remote (or a read in this datacenter) failed.
    pub fn failed(&self, error: String, remote_side: bool) {
        self.errors.inc();
        let mut s = self.state();
        if remote_side {
            self.up.set(0);
            s.link = "down";
        }
        s.last_error = Some((SystemTime::now(), error));
    }

    /// A round of shipping ended with `backlog` positions left.
    pub fn round(&self, backlog: u64) {
        self.lag_records.set(backlog as i64);
        let mut s = self.state();
        let now = Instant::now();
        if backlog == 0 {
            s.caught_up = Some(now);
        }
        let since = s.caught_up.unwrap_or(s.started);
        self.lag_seconds.set(if backlog == 0 { 0.0 } else { now.duration_since(since).as_secs_f64() });
    }

    /// The backstop compared `partitions` and shipped `records` the cursors had missed.
    pub fn compared(&self, partitions: usize, records: usize) {
        self.compared.inc_by(partitions as u64);
        self.backstopped.inc_by(records as u64);
    }

    /// What the shipper is doing, for status.
    pub fn worker(&self, what: &'static str) {
        self.state().worker = what;
    }

    pub fn status(&self) -> Value {
        let s = self.state();
        json!({
            "remote": self.remote,
            "addresses": self.addresses,
            "shipping_to": s.current.map(|a| a.to_string()),
            "link": s.link,
            "worker": s.worker,
            "lag_seconds": self.lag_seconds.get(),
            "lag_records": self.lag_records.get(),
            "rtt_ms": (self.rtt_seconds.get() * 1000.0),
            "sent_bytes": self.sent_bytes.get(),
            "received_bytes": self.received_bytes.get(),
            "shipped_records": self.shipped.get(),
            "applied_records": self.applied.get(),
            "errors": self.errors.get(),
            "backstop_comparisons": self.compared.get(),
            "backstop_shipped_records": self.backstopped.get(),
            "last_error": s.last_error.as_ref().map(|(at, e)| json!({
                "at": opencluster_pki::format_time(*at),
                "error": e,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reports_lag_state_and_errors() {
        let registry = Registry::new();
        let m = LinkMetrics::register(&registry);
        let link = Link::new("dc2", &["conn.dc2.example:7948".to_string()], &m);
        assert_eq!(link.status()["link"], "connecting");
        link.round(10);
        assert_eq!(link.status()["lag_records"], 10);
        link.failed("cannot reach dc2".into(), true);
        let s = link.status();
        assert_eq!((s["link"].as_str(), s["errors"].as_u64()), (Some("down"), Some(1)));
        assert_eq!(s["last_error"]["error"], "cannot reach dc2");
        link.shipped(3, 100, Duration::from_millis(42), "192.0.2.1:7948".parse().unwrap());
        link.round(0);
        let s = link.status();
        assert_eq!(
            (s["link"].as_str(), s["lag_records"].as_i64(), s["lag_seconds"].as_f64()),
            (Some("up"), Some(0), Some(0.0))
        );
        assert_eq!((s["shipped_records"].as_u64(), s["sent_bytes"].as_u64()), (Some(3), Some(100)));
        assert!((s["rtt_ms"].as_f64().unwrap() - 42.0).abs() < 0.001);
        assert_eq!(s["shipping_to"], "192.0.2.1:7948");
        let text = crate::admin::status_text(&serde_json::json!({
            "name": "c1", "datacenter": "dc1", "data_nodes": 3, "links": [s],
            "share": { "partitions_owned": 500, "connectors": ["c1", "c2"] },
        }));
        assert!(text.contains("connector c1 of datacenter dc1 (3 data nodes seen)"), "{text}");
        assert!(text.contains("ships 500 partitions; live connectors of the datacenter: c1, c2"), "{text}");
        assert!(text.lines().nth(3).is_some_and(|l| l.starts_with("dc2") && l.contains(" up ")), "{text}");
    }
}
