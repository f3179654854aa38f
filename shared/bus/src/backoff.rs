//! The one backoff every reconnect and every patient retry of leadpipe uses: the wait doubles
//! from `min` up to `max`, without end and without jitter (the publisher's reconnects, the
//! senders' consumer sessions, their held writes and their probes of a paused destination).
//! Built on `backon`; a caller keeps the iterator and starts a new one when things work again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Waits of `min`, `2·min`, `4·min`, … capped at `max`, forever.
pub fn doubling(min: Duration, max: Duration) -> Doubling {
    Doubling {
        inner: ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times()
            .build(),
        max: max.max(min),
    }
}

/// The waits of [`doubling`].
#[derive(Debug)]
pub struct Doubling {
    inner: ExponentialBackoff,
    max: Duration,
}

impl Doubling {
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_minimum_up_to_the_cap() {
        let mut b = doubling(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..7).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
        // A cap below the minimum waits the minimum.
        let mut b = doubling(Duration::from_millis(500), Duration::from_millis(300));
        assert_eq!(b.next_wait(), Duration::from_millis(500));
        assert_eq!(b.next_wait(), Duration::from_millis(500));
    }
}
