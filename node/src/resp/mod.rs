//! RESP, the Redis wire protocol: how clients' bytes become requests and how replies
//! are written back, in RESP2 or RESP3 as each connection negotiated.

pub mod codec;
pub mod commands;
pub mod connection;
pub mod hub;
pub mod outbox;
pub mod server;
pub mod table;
pub mod tracking;
