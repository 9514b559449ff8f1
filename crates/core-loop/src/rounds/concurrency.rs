//! Bounded, order-preserving, abortable concurrent map.

use std::future::Future;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::LoopError;

/// The result of [`map_with_concurrency`]: one slot per input item, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutcome<R> {
    /// `Some(result)` for every item that was started (a started item always runs to its end),
    /// `None` for an item that was never started because the token was cancelled first.
    pub results: Vec<Option<R>>,
    /// Input indices of the items that were not started, ascending.
    pub not_started: Vec<usize>,
    /// The most items that were in flight at the same moment.
    pub peak_in_flight: usize,
}

impl<R> MapOutcome<R> {
    /// Whether the cancellation token stopped the map before every item was started.
    pub fn aborted(&self) -> bool {
        !self.not_started.is_empty()
    }

    /// The results of every item, in input order, or `None` when some were not started.
    pub fn into_complete(self) -> Option<Vec<R>> {
        self.results.into_iter().collect()
    }
}

/// Runs `f(index, item)` over `items` with at most `max_concurrency` futures in flight, and
/// returns the results in input order.
///
/// Items are started in input order. Before each start the `cancel` token is checked: once it
/// is cancelled no further item is started (those are reported in
/// [`MapOutcome::not_started`]), while items already started run to their end (pass the token
/// into `f` if they should stop early too). The futures are polled concurrently on the calling
/// task, so `f` needs neither `Send` nor `'static`.
///
/// Errors: [`LoopError::InvalidConfig`] when `max_concurrency` is 0.
///
/// ```
/// # use agentrt_core_loop::map_with_concurrency;
/// # use tokio_util::sync::CancellationToken;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), agentrt_core_loop::LoopError> {
/// let out = map_with_concurrency(vec![3, 1, 2], 2, &CancellationToken::new(), |_, n| async move {
///     n * 10
/// })
/// .await?;
/// assert_eq!(out.into_complete(), Some(vec![30, 10, 20]));
/// # Ok(()) }
/// ```
pub async fn map_with_concurrency<T, R, F, Fut>(
    items: Vec<T>,
    max_concurrency: usize,
    cancel: &CancellationToken,
    mut f: F,
) -> Result<MapOutcome<R>, LoopError>
where
    F: FnMut(usize, T) -> Fut,
    Fut: Future<Output = R>,
{
    if max_concurrency == 0 {
        return Err(LoopError::InvalidConfig(
            "max_concurrency: 0 is not allowed; expected at least 1".to_owned(),
        ));
    }
    let total = items.len();
    let mut results: Vec<Option<R>> = Vec::with_capacity(total);
    results.resize_with(total, || None);
    let mut pending = items.into_iter().enumerate();
    let mut in_flight = FuturesUnordered::new();
    let mut peak = 0usize;
    let mut not_started = Vec::new();
    let mut aborted = false;
    loop {
        while !aborted && in_flight.len() < max_concurrency {
            if cancel.is_cancelled() {
                aborted = true;
                break;
            }
            match pending.next() {
                Some((index, item)) => {
                    let fut = f(index, item);
                    in_flight.push(async move { (index, fut.await) });
                    peak = peak.max(in_flight.len());
                }
                None => break,
            }
        }
        match in_flight.next().await {
            Some((index, result)) => {
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
            None => {
                // Nothing in flight: either every item was started, or the token stopped the
                // launching and the rest are reported as not started.
                not_started.extend(pending.by_ref().map(|(index, _)| index));
                break;
            }
        }
    }
    Ok(MapOutcome {
        results,
        not_started,
        peak_in_flight: peak,
    })
}
