//! `colony-admin`: operates the Redis Cluster Colony runs on, from outside the gateways.
//!
//! Today it tells the cluster's state (`status`), adds nodes (`add-node`) and moves one slot
//! while players play ([`slot_move`]); the commands built on the move (`reshard`,
//! `rebalance`, `remove-node`) follow the design in `docs/design/resharding.md`. It uses connections of its own to every node, never the
//! store's road: what it sends (`CLUSTER` reads now, `SETSLOT`, `DUMP`/`RESTORE` later) the
//! gateways never send.

pub mod nodes;
pub mod reshard;
pub mod slot_move;
pub mod status;

pub use nodes::{add_node, Added};
pub use status::{status, Status};
