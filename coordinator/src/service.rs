//! What every long-running task of a coordinator shares: the supervisor and the drainers
//! today, job runners, output senders and maintenance tasks later.
//!
//! A task runs in a loop until the shared [`Shutdown`] fires. Each turn is a step that is
//! never interrupted (a lookup, a scan for queues: shutdown is checked before it) and then
//! a wait that shutdown cuts short ([`unless_stopped`], [`pause`]): the waits are the safe
//! points. After a failure it will retry, a task waits with a [`Backoff`].
use std::future::Future;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Exponential back-off between retries: doubles from `initial` up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// Start again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next retry (and double the one after it).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Wait for `wait`, unless shutdown comes first: then `wait` is dropped and the result is
/// `None`. Only for waiting: a step that must finish is awaited on its own.
pub async fn unless_stopped<F: Future>(wait: F, shutdown: &mut Shutdown) -> Option<F::Output> {
    tokio::select! {
        output = wait => Some(output),
        _ = shutdown.stopped() => None,
    }
}

/// Sleep for `delay`, or less if shutdown comes first.
pub async fn pause(delay: Duration, shutdown: &Shutdown) {
    unless_stopped(tokio::time::sleep(delay), &mut shutdown.clone()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shutdown;

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1000, 1000]);
    }

    #[tokio::test]
    async fn a_wait_ends_early_on_shutdown_and_not_otherwise() {
        let (trigger, mut stop) = shutdown::channel();
        assert_eq!(unless_stopped(async { 7 }, &mut stop).await, Some(7));
        trigger.stop();
        assert_eq!(
            unless_stopped(std::future::pending::<()>(), &mut stop).await,
            None
        );
        // A pause that would last an hour returns at once.
        pause(Duration::from_secs(3600), &stop).await;
    }
}
