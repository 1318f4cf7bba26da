//! edge-budget's core: exact money, budget windows with calendar resets,
//! the admission rule, and the store that enforces it atomically in
//! DynamoDB. No Lambda types here: the function crates translate events.

pub mod alerts;
pub mod config;
pub mod decision;
pub mod duration;
pub mod escrow;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod money;
pub mod plan;
pub mod receipt;
pub mod service;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use money::Money;
