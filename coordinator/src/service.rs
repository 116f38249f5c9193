//! What every long-running task of a coordinator shares: the supervisor and the drainers
//! today, job runners, output senders and maintenance tasks later. A task runs in a loop
//! until the shared [`Shutdown`] fires, stops only at a safe point (a lookup or a job step
//! is always finished), and waits with a [`Backoff`] after a failure it will retry.
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Exponential back-off between retries: doubles from `initial` up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { max, next: initial }
    }

    /// The delay before the next retry (and double the one after it).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Sleep for `delay`, or less if shutdown comes first. Returns false if it did.
pub async fn pause(delay: Duration, shutdown: &Shutdown) -> bool {
    let mut stop = shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.stopped() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![200, 400, 800, 1000, 1000]);
    }
}
