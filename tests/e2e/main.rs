//! The end-to-end tests: one binary, one module per concern, all starting
//! from the `TestApp` of `helpers.rs` (a fresh table in the DynamoDB
//! emulator that scripts/test.sh starts, and the functions' API calls).
//! Run one concern with `bash scripts/test.sh -p edge-budget --test e2e admin::`.

mod helpers;

mod admin;
mod admin_hardening;
mod adversarial;
mod alerts;
mod authorize;
mod capacity;
mod conservation;
mod dynamo_errors;
mod faults;
mod fuzz;
mod gateway;
mod load;
mod observability;
mod plans;
mod receipts;
mod reset_scale;
mod retention;
mod round_trips;
mod scopes;
mod security;
mod sharded;
mod template;
