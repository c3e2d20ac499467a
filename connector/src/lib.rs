//! OpenCluster connector: bridges the datacenters of a cluster.
//!
//! A connector is a member of its datacenter's gossip with role `connector` (it holds no
//! data and is never given partitions). It reads the changes that originated in its
//! datacenter from every data node's per-partition change sequences and ships them to
//! the connectors of the other datacenters over QUIC with mutual TLS ([`ship`], [`wan`]);
//! what other datacenters ship to it, it applies at the owners in its own datacenter
//! with the records' original HLC and origin ([`apply`]). Its position in each node's
//! sequences is kept at that node ([`cursors`]), so that two or more connectors of a
//! datacenter share the partitions and take each other's share over ([`share`]). A slow
//! periodic comparison of every partition with each remote datacenter catches whatever
//! the cursors missed ([`backstop`]). Requests for keys whose home is one datacenter
//! (`keyspaces.home`) are relayed to and from it ([`home`]). See docs/multi-datacenter.md.

pub mod admin;
pub mod apply;
pub mod backstop;
pub mod cli;
pub mod cursors;
pub mod home;
pub mod link;
pub mod run;
pub mod share;
pub mod ship;
pub mod wan;
