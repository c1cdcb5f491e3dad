//! Colony's load test: simulates batched game-client traffic against gateways, reports
//! latency and throughput, and checks that nothing acknowledged was lost or applied twice.
//!
//! - [`scenario`]: what to simulate (pure).
//! - [`chaos`]: chaos mode's fault schedule and unavailability windows (pure).
//! - [`control`]: process control of a local cluster through its control directory, and the
//!   faults injected through it.
//! - The ledger of coin increments and the final check are `colony_testkit::ledger`, the
//!   same record the fault tests keep.
//! - [`report`]: latency per operation, errors, correctness, latency over time; table, JSON,
//!   HTML.
//! - [`runner`]: sets players up, drives sessions through the Rust client, reads back.

pub mod chaos;
pub mod charts;
pub mod control;
pub mod report;
pub mod runner;
pub mod scenario;
