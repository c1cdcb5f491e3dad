//! Colony's load test: simulates batched game-client traffic against gateways, reports
//! latency and throughput, and checks that nothing acknowledged was lost or applied twice.
//!
//! - [`scenario`]: what to simulate (pure).
//! - [`checker`]: the ledger of coin increments and the final check (pure).
//! - [`report`]: latency per operation, errors, correctness, latency over time; table, JSON,
//!   HTML.
//! - [`runner`]: sets players up, drives sessions through the Rust client, reads back.

pub mod checker;
pub mod report;
pub mod runner;
pub mod scenario;
