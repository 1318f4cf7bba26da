//! Reads: single items, batches (chunked to DynamoDB's limits) and index
//! queries.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use crate::model::{Entity, EntityRef};
use crate::store::{Reads, StoreError};

use super::codec::*;
use super::errors::*;
use super::expr::*;
use super::DynamoStore;

impl DynamoStore {
    pub(super) async fn batch_get(
        &self,
        pks: Vec<String>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut pending: Vec<HashMap<String, AttributeValue>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pk in pks {
            if seen.insert(pk.clone()) {
                pending.push(key_of(pk));
            }
        }
        let mut found = Vec::new();
        // BatchGetItem takes at most 100 keys, and answers at most 16 MB:
        // what it did not read comes back as unprocessed keys (also under
        // throttling), to ask for again after a pause.
        let mut rounds_short = 0;
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(BATCH_GET_KEYS));
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::replace(&mut pending, rest)))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| unavailable("batch get", e))?;
            if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                found.extend(items.iter().cloned());
            }
            if let Some(rest) = out.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                if !rest.keys().is_empty() {
                    if rounds_short == BATCH_GET_ROUNDS {
                        return Err(StoreError::Unavailable(format!(
                            "batch get left {} keys unprocessed after {BATCH_GET_ROUNDS} retries",
                            rest.keys().len() + pending.len()
                        )));
                    }
                    pending.extend(rest.keys().iter().cloned());
                    backoff(rounds_short).await;
                    rounds_short += 1;
                }
            }
        }
        Ok(found)
    }

    pub(super) async fn query_all(
        &self,
        index: &str,
        pk_attr: &str,
        pk: String,
        sk_upper: Option<(&str, String)>,
        limit: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut ex = Expr::default();
            let pk_name = ex.name(pk_attr);
            let pk_value = ex.value(s(pk.clone()));
            let mut condition = format!("{pk_name} = {pk_value}");
            if let Some((sk_attr, upper)) = &sk_upper {
                let sk = ex.name(sk_attr);
                let v = ex.value(s(upper.clone()));
                condition.push_str(&format!(" AND {sk} <= {v}"));
            }
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .set_expression_attribute_names(ex.names())
                .set_expression_attribute_values(ex.values())
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("query", e))?;
            out.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() || out.len() >= limit {
                return Ok(out);
            }
        }
    }
}

#[async_trait]
impl Reads for DynamoStore {
    async fn load(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(entity))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get item", e))?;
        out.item().map(entity_from_item).transpose()
    }

    async fn load_many(&self, entities: &[EntityRef]) -> Result<Vec<Entity>, StoreError> {
        let items = self
            .batch_get(entities.iter().map(entity_pk).collect())
            .await?;
        let mut found = items
            .iter()
            .map(entity_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        found.sort_by(|a, b| a.entity.cmp(&b.entity));
        Ok(found)
    }
}
