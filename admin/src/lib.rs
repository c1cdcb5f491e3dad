//! `colony-admin`: operates the Redis Cluster Colony runs on, from outside the gateways.
//!
//! Today it tells the cluster's state (`status`); moving slots while players play
//! (`reshard`, `rebalance`, `add-node`, `remove-node`) follows the design in
//! `docs/design/resharding.md`. It uses connections of its own to every node, never the
//! store's road: what it sends (`CLUSTER` reads now, `SETSLOT`, `DUMP`/`RESTORE` later) the
//! gateways never send.

pub mod status;

pub use status::{status, Status};
