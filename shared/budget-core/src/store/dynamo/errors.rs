//! DynamoDB's answers, classified in one place: which are conditions that
//! failed, which are contention or throttling (back off, retry), which are
//! refusals that a retry cannot change; and the retry loops of plain calls.

use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_get_items::TransactGetItemsError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::TransactWriteItem;
use aws_sdk_dynamodb::Client;

use crate::store::{Isolated, StoreError};

/// A failed call as a [`StoreError`]: a `ValidationException` is
/// [`StoreError::Rejected`] (sending it again cannot help), anything else
/// [`StoreError::Unavailable`] (fail closed, retry later).
pub(super) fn unavailable<E>(what: &str, e: E) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match classify(e.code().unwrap_or_default(), e.message()) {
        Some(Refusal::Validation(message)) => StoreError::Rejected(format!("{what}: {message}")),
        _ => StoreError::Unavailable(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

pub(super) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("request could not be built: {e}"))
}

/// Why DynamoDB refused an item of a transaction (a cancellation reason's
/// `Code`) or a whole request (an error's code). Every answer is read here,
/// once; the table in docs/reliability.md lists what each becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `ConditionalCheckFailed`: the item is not as it was read. Re-read.
    Condition,
    /// `TransactionConflict` (another transaction holds the item),
    /// `TransactionConflictException` (a plain write met a transaction),
    /// `TransactionInProgressException` (the same transaction, sent again
    /// while the first is still running). Back off, send again.
    Conflict,
    /// `ThrottlingError`, `ProvisionedThroughputExceeded`: an item of a
    /// transaction was throttled (the SDK does not retry those). Back off,
    /// send again. The request-level `ThrottlingException` and
    /// `ProvisionedThroughputExceededException` are the SDK's to retry
    /// (with its own backoff, within the deadline); past that the store is
    /// unavailable.
    Throttled,
    /// `ValidationError`, `ItemCollectionSizeLimitExceeded`,
    /// `ValidationException`: the request itself is refused (an item past
    /// 400 KB, a key past 2,048 bytes). Never retried.
    Validation(String),
    /// Any other code: the store failed. Fail closed.
    Other(String),
}

/// `None` for an item that passed (code `None`) or an empty code.
pub(super) fn classify(code: &str, message: Option<&str>) -> Option<Refusal> {
    let described = |code: &str| match message {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code.to_string(),
    };
    Some(match code {
        "" | "None" => return None,
        "ConditionalCheckFailed" | "ConditionalCheckFailedException" => Refusal::Condition,
        "TransactionConflict"
        | "TransactionConflictException"
        | "TransactionInProgressException" => Refusal::Conflict,
        "ThrottlingError"
        | "ProvisionedThroughputExceeded"
        | "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded" => Refusal::Throttled,
        "ValidationError"
        | "ValidationException"
        | "ItemCollectionSizeLimitExceeded"
        | "ItemCollectionSizeLimitExceededException" => Refusal::Validation(described(code)),
        other => Refusal::Other(described(other)),
    })
}

/// The outcome of one transaction, after validation errors and unknown
/// codes became errors.
#[derive(Debug)]
pub(super) enum TxOutcome {
    Committed,
    /// Some condition failed: per item, whether it was that item's.
    /// Re-read and decide.
    Failed(Vec<bool>),
    /// No condition failed, but an item was held by another transaction or
    /// throttled (or the request was): back off, send again.
    Busy,
}

/// What a cancelled transaction's reasons mean, in order of precedence: a
/// validation error (nothing will ever commit), an unknown code, a
/// conflict or throttle (the conditions of those items were not decided:
/// try the same write again), then failed conditions.
pub(super) fn cancelled(reasons: Vec<Option<Refusal>>) -> Result<TxOutcome, StoreError> {
    if let Some(Refusal::Validation(m)) = reasons
        .iter()
        .flatten()
        .find(|r| matches!(r, Refusal::Validation(_)))
    {
        return Err(StoreError::Rejected(format!("transaction: {m}")));
    }
    if let Some(Refusal::Other(m)) = reasons
        .iter()
        .flatten()
        .find(|r| matches!(r, Refusal::Other(_)))
    {
        return Err(StoreError::Unavailable(format!(
            "transaction cancelled: {m}"
        )));
    }
    if reasons
        .iter()
        .flatten()
        .any(|r| matches!(r, Refusal::Conflict | Refusal::Throttled))
    {
        return Ok(TxOutcome::Busy);
    }
    let failed: Vec<bool> = reasons
        .iter()
        .map(|r| r == &Some(Refusal::Condition))
        .collect();
    if failed.iter().any(|f| *f) {
        Ok(TxOutcome::Failed(failed))
    } else {
        Err(StoreError::Unavailable(
            "transaction cancelled without a reason".into(),
        ))
    }
}

pub(super) async fn transact(
    client: &Client,
    items: Vec<TransactWriteItem>,
) -> Result<TxOutcome, StoreError> {
    match client
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
    {
        Ok(_) => Ok(TxOutcome::Committed),
        Err(SdkError::ServiceError(e)) => match e.into_err() {
            TransactWriteItemsError::TransactionCanceledException(c) => cancelled(
                c.cancellation_reasons()
                    .iter()
                    .map(|r| classify(r.code().unwrap_or_default(), r.message()))
                    .collect(),
            ),
            other => match classify(other.code().unwrap_or_default(), other.message()) {
                // TransactionInProgressException: the SDK sent it again with
                // the same token while the first was running; once the SDK
                // gives up, a new attempt (a new token) decides afresh.
                Some(Refusal::Conflict) => Ok(TxOutcome::Busy),
                _ => Err(unavailable("transaction", other)),
            },
        },
        Err(e) => Err(unavailable("transaction", e)),
    }
}

/// A refused `TransactGetItems`: cancelled because a transaction held one
/// of its items, or one was throttled (the conflict codes of [`classify`]),
/// is [`Isolated::Busy`] — nothing was read, and reading again shortly will
/// usually succeed; anything else fails as any call does.
pub(super) fn isolated_refused<R>(
    e: SdkError<TransactGetItemsError, R>,
) -> Result<Isolated, StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(e) => {
            let err = e.into_err();
            let busy = match &err {
                TransactGetItemsError::TransactionCanceledException(c) => isolated_busy(
                    c.cancellation_reasons()
                        .iter()
                        .map(|r| classify(r.code().unwrap_or_default(), r.message())),
                ),
                other => matches!(
                    classify(other.code().unwrap_or_default(), None),
                    Some(Refusal::Conflict | Refusal::Throttled)
                ),
            };
            if busy {
                Ok(Isolated::Busy)
            } else {
                Err(unavailable("isolated read", err))
            }
        }
        e => Err(unavailable("isolated read", e)),
    }
}

/// Whether a cancelled isolated read's reasons are all contention
/// (at least one conflict or throttle, nothing else refused).
fn isolated_busy(reasons: impl Iterator<Item = Option<Refusal>>) -> bool {
    let mut busy = false;
    for r in reasons.flatten() {
        match r {
            Refusal::Conflict | Refusal::Throttled => busy = true,
            _ => return false,
        }
    }
    busy
}

/// DynamoDB's limit of keys in one BatchGetItem.
pub(super) const BATCH_GET_KEYS: usize = 100;
/// TransactWriteItems takes at most 100 items.
pub(super) const TRANSACTION_ITEMS: usize = 100;
/// Answers with unprocessed keys a batch read accepts before giving up.
pub(super) const BATCH_GET_ROUNDS: usize = 8;

/// Attempts at a plain (non-transactional) write that keeps meeting a
/// transaction on its item.
pub(super) const PLAIN_ATTEMPTS: usize = 6;

/// Sends a plain write, and again after a jittered pause while DynamoDB
/// answers `TransactionConflictException` (the item is in a transaction
/// right now; the SDK does not retry that).
pub(super) async fn send_plain<T, E, R, F, Fut>(mut send: F) -> Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut attempt = 0;
    loop {
        match send().await {
            Err(SdkError::ServiceError(e))
                if attempt + 1 < PLAIN_ATTEMPTS
                    && classify(e.err().code().unwrap_or_default(), None)
                        == Some(Refusal::Conflict) =>
            {
                backoff(attempt).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A jittered exponential pause: 5–10 ms, 10–20 ms, … up to 160–320 ms.
pub(super) async fn backoff(attempt: usize) {
    let base = 5u64 << attempt.min(5);
    let jitter = rand::random::<u64>() % base;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_reasons_are_classified_with_precedence() {
        let r = |codes: &[&str]| {
            cancelled(codes.iter().map(|c| classify(c, Some("because"))).collect())
        };
        assert!(matches!(
            r(&["None", "ThrottlingError"]),
            Ok(TxOutcome::Busy)
        ));
        assert!(matches!(
            r(&["ProvisionedThroughputExceeded"]),
            Ok(TxOutcome::Busy)
        ));
        assert!(matches!(
            r(&["ConditionalCheckFailed", "TransactionConflict"]),
            Ok(TxOutcome::Busy)
        ));
        match r(&["None", "ConditionalCheckFailed"]) {
            Ok(TxOutcome::Failed(f)) => assert_eq!(f, vec![false, true]),
            other => panic!("{other:?}"),
        }
        match r(&[
            "ConditionalCheckFailed",
            "ValidationError",
            "ThrottlingError",
        ]) {
            Err(StoreError::Rejected(m)) => assert!(m.contains("ValidationError: because"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r(&["ItemCollectionSizeLimitExceeded"]),
            Err(StoreError::Rejected(_))
        ));
        assert!(matches!(
            r(&["SomethingNew", "ThrottlingError"]),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            r(&["None", "None"]),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(
            classify("TransactionInProgressException", None),
            Some(Refusal::Conflict)
        );
        assert_eq!(classify("None", None), None);
    }

    #[test]
    fn an_isolated_read_cancelled_by_a_transaction_is_busy_not_an_error() {
        let r = |codes: &[&str]| isolated_busy(codes.iter().map(|c| classify(c, None)));
        assert!(r(&["None", "TransactionConflict", "None"]));
        assert!(r(&["ThrottlingError"]));
        assert!(!r(&["None", "ValidationError", "TransactionConflict"]));
        assert!(!r(&["None", "None"]));
    }
}
