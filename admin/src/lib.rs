//! `colony-admin`: operates the Redis Cluster Colony runs on, from outside the gateways.
//!
//! Today it tells the cluster's state (`status`) and adds nodes (`add-node`); moving slots
//! while players play (`reshard`, `rebalance`, `remove-node`) follows the design in
//! `docs/design/resharding.md`. It uses connections of its own to every node, never the
//! store's road: what it sends (`CLUSTER` reads now, `SETSLOT`, `DUMP`/`RESTORE` later) the
//! gateways never send.

pub mod nodes;
pub mod status;

pub use nodes::{add_node, Added};
pub use status::{status, Status};
