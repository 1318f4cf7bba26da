//! The DynamoDB adapter. Every change of a counter is a conditional write:
//! admission is the condition of the write that reserves, so there is no
//! read-then-write gap for concurrent requests to slip through.
//!
//! Amounts are stored as integer nano-USD (exact in DynamoDB's decimal
//! numbers and in any emulator); instants as epoch seconds.
//!
//! One module per responsibility: `codec` (items), `expr` (expressions and
//! the rendering of plans), `errors` (DynamoDB's answers), and the
//! operations by role: `budget`, `reset`, `admin`, `queries`.

mod admin;
mod alerts;
mod budget;
mod codec;
mod errors;
mod expr;
mod queries;
mod reset;
pub mod size;

use std::time::Duration;

use aws_sdk_dynamodb::Client;

pub use alerts::{entity_from_image, slot_spend_rose, Claim, CLAIM_LEASE_SECONDS};
pub use codec::{entity_pk, meta_pk, reservation_pk};

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    /// A client from the standard AWS environment (`AWS_REGION`,
    /// credentials, `AWS_ENDPOINT_URL_DYNAMODB` for an emulator), with a
    /// deadline on every operation: past it, callers fail closed.
    pub async fn client_from_env(timeout: Duration) -> Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .operation_attempt_timeout(timeout.mul_f32(0.6))
            .connect_timeout(timeout.mul_f32(0.5).min(Duration::from_secs(1)))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await;
        Client::new(&config)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}
