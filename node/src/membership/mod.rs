//! Membership: who is in this datacenter's cluster, and in what state.
//!
//! The membership layer (foca SWIM gossip with Lifeguard over UDP) lives here: one task owns
//! the `Foca` value, and every packet it sends or receives goes through the sealed envelope
//! in [`seal`].

pub mod seal;
