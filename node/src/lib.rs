//! OpenCluster node library: every OpenCluster process builds on it.
//!
//! Layered as in DESIGN.md; a module only uses modules listed above it.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod glob;
pub mod heap;
pub mod hlc;
pub mod logging;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod placement;
pub mod process;
pub mod queue;
pub mod record;
pub mod resp;
pub mod security;
pub mod store;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Redis version whose protocol and command replies this node matches, reported to
/// clients that choose features by version. 7.4 is what redis-py and Jedis ask before they
/// turn on their client-side caches: the node honours the tracking those rely on
/// (`CLIENT TRACKING` with every mode, RESP3 invalidation pushes, REDIRECT for RESP2).
pub const REDIS_COMPAT_VERSION: &str = "7.4.0";
