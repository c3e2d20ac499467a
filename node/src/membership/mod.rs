//! Membership: who is in this datacenter's cluster, and in what state.
//!
//! foca SWIM gossip with Lifeguard over UDP. One task owns the `Foca` value
//! ([`runtime`]); every packet it sends or receives goes through the sealed envelope in
//! [`seal`]; its timers come back in deadline order from one queue ([`timers`]). Members
//! are known by [`identity::NodeIdentity`] (node id, gossip address, generation, name,
//! datacenter, role, version, client address), advertised at an address that may come from
//! a network interface ([`interface`]); [`join`] finds the cluster at start; the
//! rest of the node reads [`members::Members`], where members that stopped on purpose
//! show as `left` thanks to the notices of [`left`]. [`keyring::LiveKeyring`] holds the
//! gossip keys, which the admin API can rotate at runtime. [`timing`] maps the `gossip.*` settings onto
//! foca and bounds how long a crash takes to be seen.

pub mod identity;
pub mod interface;
pub mod join;
pub mod keyring;
pub mod left;
pub mod members;
pub mod runtime;
pub mod seal;
pub mod timers;
pub mod timing;
