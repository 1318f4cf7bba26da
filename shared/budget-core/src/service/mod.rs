//! The three budget operations — reserve (authorize), finish (settle,
//! release, expire) and reset — over the store ports. Each retries only
//! what is safe to retry: a write whose conditions failed is re-decided
//! from a fresh read, never blindly repeated.

mod authorize;
pub mod escrow;
mod finish;
mod reset;
pub mod stats;

use std::time::Duration;

pub use crate::decision::Requested;
pub use authorize::{
    request_tags, reservation_id, AuthorizeOutcome, Authorizer, RequestScopes, MAX_KEY_BYTES,
    MAX_REQUEST_TAGS, MAX_REQUEST_TAGS_BYTES, RESERVATION_HEX,
};
pub use finish::{expire, settle, SettleOutcome};
pub use reset::{reset, ResetSummary};
pub use stats::{measured, OpStats};

/// Attempts at one operation before giving up (contention or movement).
const MAX_ATTEMPTS: usize = 8;

async fn backoff(attempt: usize) {
    let base = 5u64 << attempt.min(5);
    let jitter = rand::random::<u64>() % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}
