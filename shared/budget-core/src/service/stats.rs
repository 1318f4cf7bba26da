//! What one operation cost in store requests: how many it made, how long
//! they took, and how many attempts it retried. Counted in a task-local
//! cell around the operation ([`measured`]), so the services keep their
//! signatures and concurrent operations never mix their counts; outside
//! [`measured`] the counting is a no-op.

use std::cell::RefCell;
use std::future::Future;
use std::time::{Duration, Instant};

/// Store requests of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Requests made to the store (a read or a write, each one call; the
    /// SDK's own retries of a call are inside it).
    pub store_calls: u32,
    /// Time spent waiting for the store, over every call.
    pub store_time: Duration,
    /// Attempts past the first: a write re-decided after a conflict, a
    /// stale read or a busy item.
    pub retries: u32,
}

tokio::task_local! {
    static STATS: RefCell<OpStats>;
}

/// Runs `operation` and returns what it cost in store requests.
pub async fn measured<F: Future>(operation: F) -> (F::Output, OpStats) {
    STATS
        .scope(RefCell::new(OpStats::default()), async {
            let out = operation.await;
            let stats = STATS.with(|s| *s.borrow());
            (out, stats)
        })
        .await
}

/// One store request, timed and counted.
pub(crate) async fn store_call<F: Future>(call: F) -> F::Output {
    let started = Instant::now();
    let out = call.await;
    let _ = STATS.try_with(|s| {
        let mut s = s.borrow_mut();
        s.store_calls += 1;
        s.store_time += started.elapsed();
    });
    out
}

/// One more attempt at the same operation.
pub(crate) fn retried() {
    let _ = STATS.try_with(|s| s.borrow_mut().retries += 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_only_inside_its_scope() {
        store_call(async {}).await;
        retried();
        let ((), stats) = measured(async {
            store_call(async {}).await;
            store_call(async {}).await;
            retried();
        })
        .await;
        assert_eq!((stats.store_calls, stats.retries), (2, 1));
        let ((), nested_free) = measured(async {}).await;
        assert_eq!(nested_free, OpStats::default());
    }
}
