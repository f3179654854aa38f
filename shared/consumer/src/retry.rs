//! Retry delays: exponential backoff with full jitter, `Retry-After` honoured within bounds.

use std::time::Duration;

use rand::Rng;

/// The shortest delay ever scheduled, so a retry never spins.
pub const MIN_DELAY: Duration = Duration::from_millis(50);

/// The delay before attempt `attempt + 1`, after `attempt` (≥ 1) attempts failed:
/// uniform in `[0, min(max, base · 2^(attempt-1))]` ("full jitter"), at least the
/// destination's `Retry-After` (itself capped at `max`), never below [`MIN_DELAY`].
pub fn delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(max);
    let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=exp.as_secs_f64()));
    let wanted = match retry_after {
        Some(ra) => jittered.max(ra.min(max)),
        None => jittered,
    };
    wanted.max(MIN_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_the_cap_and_honour_retry_after() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=12 {
            let cap = (base * 2u32.pow(attempt - 1)).min(max);
            for _ in 0..200 {
                let d = delay(attempt, base, max, None);
                assert!(
                    d >= MIN_DELAY && d <= cap.max(MIN_DELAY),
                    "{attempt}: {d:?}"
                );
            }
        }
        for _ in 0..100 {
            assert!(delay(1, base, max, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
            assert!(delay(1, base, max, Some(Duration::from_secs(3600))) <= max);
        }
    }

    #[test]
    fn full_jitter_spreads_delays() {
        let ds: Vec<Duration> = (0..100)
            .map(|_| delay(5, Duration::from_secs(1), Duration::from_secs(60), None))
            .collect();
        let min = ds.iter().min().unwrap();
        let max = ds.iter().max().unwrap();
        assert!(*max - *min > Duration::from_secs(4), "{min:?}..{max:?}");
    }
}
