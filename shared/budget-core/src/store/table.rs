//! The table: its one definition. `template.yaml` declares the same
//! (a test compares them), and local runs create it from here.
//!
//! Single table, partition key `pk` only:
//! - `key#<sha256>`, `user#<id>`, `team#<id>`, `organization#<id>`: an
//!   entity with its windows (the kind prefix keeps ids of different kinds
//!   apart);
//! - `res#<id>`: a reservation.
//!
//! Indexes (keys only). `gsi1` (`gsi1pk`, `gsi1sk`): keys by user (`user#<id>#keys`),
//! teams by organization (`organization#<id>#keys`), and
//! held reservations by expiry (`held#<shard>`, expiry as zero-padded epoch
//! seconds) for the reset job, and sharded users and teams by their pool
//! item (`hot#<shard>`, sort key the entity's own key) for the job's
//! shrinking of idle shards. Index `gsi2` (`gsi2pk`, `gsi2sk`): keys by
//! team. Index `due` (`due_pk`, `due_sk`): keys, users and teams by the
//! earliest boundary of their windows (`due#<shard>`, zero-padded epoch
//! seconds), sparse (an entity with no window that resets is not in it):
//! what the reset job reads instead of the table. TTL attribute `ttl`
//! removes finished reservations after a week (and alert markers, `alert#<id>`,
//! five weeks after their window period). The stream (new and old images)
//! feeds the `notify` function's budget alerts.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;

use super::StoreError;

pub const PARTITION_KEY: &str = "pk";
pub const TTL_ATTRIBUTE: &str = "ttl";
/// `(index name, partition key, sort key)`, all string attributes, all
/// projecting keys only: a counter update of a key item then never
/// rewrites index entries (they would double its write cost).
pub const INDEXES: [(&str, &str, &str); 3] = [
    ("gsi1", "gsi1pk", "gsi1sk"),
    ("gsi2", "gsi2pk", "gsi2sk"),
    (DUE_INDEX, DUE_PK, DUE_SK),
];
/// Held reservations are spread over this many index partitions, so the
/// index never has one hot partition.
pub const HELD_SHARDS: u32 = 16;
/// The index of entities by their earliest window boundary.
pub const DUE_INDEX: &str = "due";
pub const DUE_PK: &str = "due_pk";
pub const DUE_SK: &str = "due_sk";
/// Entities are spread over this many partitions of the `due` index (an
/// entity stays in one: its shard is a hash of its key), so a midnight
/// boundary shared by every entity is not one hot partition.
pub const DUE_SHARDS: u32 = 16;
/// Sharded entities' pools are spread over this many `gsi1` partitions
/// (`hot#<shard>`, a hash of the entity's key); the job queries each.
pub const HOT_SHARDS: u32 = 4;

/// Creates the table as AWS would from `template.yaml` (on-demand, the
/// indexes, TTL). An existing table is left alone.
pub async fn create_table(client: &Client, name: &str) -> Result<bool, StoreError> {
    create_table_with(client, name, true).await
}

/// [`create_table`], with or without the stream. Tests create theirs
/// without it unless they read it: the emulator copies a whole table,
/// stream records included, for every item of every transaction, so a
/// stream that only grows makes a long test slower with every write.
pub async fn create_table_with(
    client: &Client,
    name: &str,
    stream: bool,
) -> Result<bool, StoreError> {
    let unavailable = |e: String| StoreError::Unavailable(e);
    let s = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| unavailable(e.to_string()))
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .map_err(|e| unavailable(e.to_string()))
    };
    let mut attributes = vec![s(PARTITION_KEY)?];
    let mut indexes = Vec::new();
    for (index, pk, sk) in INDEXES {
        attributes.push(s(pk)?);
        attributes.push(s(sk)?);
        indexes.push(
            GlobalSecondaryIndex::builder()
                .index_name(index)
                .key_schema(key(pk, KeyType::Hash)?)
                .key_schema(key(sk, KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(|e| unavailable(e.to_string()))?,
        );
    }
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(attributes))
        .key_schema(key(PARTITION_KEY, KeyType::Hash)?)
        .set_global_secondary_indexes(Some(indexes))
        .set_stream_specification(if stream {
            Some(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(|e| unavailable(e.to_string()))?,
            )
        } else {
            None
        })
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e) => {
            let service = e.into_service_error();
            if service.is_resource_in_use_exception() {
                return Ok(false);
            }
            return Err(unavailable(format!("create table {name}: {service}")));
        }
    }
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .map_err(|e| unavailable(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| unavailable(format!("enable TTL on {name}: {}", e.into_service_error())))?;
    Ok(true)
}
