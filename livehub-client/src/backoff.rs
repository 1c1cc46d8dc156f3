//! Reconnection delays: exponential, with full jitter, between a floor and a ceiling.
//!
//! Attempt `n` (0 for the first retry after a loss) waits a uniformly random time in
//! `[floor, min(ceiling, floor * 2^(n+1))]`: the window doubles with each failure until it
//! reaches the ceiling, and every client picks its own point in it, so that the clients of a
//! server that restarts come back spread out instead of all at once ("full jitter", as in
//! AWS's architecture blog's "Exponential Backoff And Jitter").

use std::time::Duration;

/// Where the backoff starts after a shutdown (close 1001): a window of 16 floors at once, so
/// that the clients of a restarting server do not all knock within the first second.
pub(crate) const AFTER_SHUTDOWN: u32 = 3;

/// Where the backoff starts after the server closed for flooding (close 1008 `rate_limited`).
pub(crate) const AFTER_RATE_LIMIT: u32 = 3;

/// The reconnection policy and its random source.
#[derive(Debug)]
pub(crate) struct Backoff {
    floor: Duration,
    ceiling: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Backoff {
        let mut seed = [0u8; 8];
        // Without OS randomness the jitter is still there, only predictable.
        let _ = getrandom::fill(&mut seed);
        Backoff {
            floor,
            ceiling: ceiling.max(floor),
            rng: u64::from_le_bytes(seed) | 1,
        }
    }

    /// The delay before retry `attempt` (0-based).
    pub(crate) fn delay(&mut self, attempt: u32) -> Duration {
        let unit = self.next_unit();
        window(self.floor, self.ceiling, attempt, unit)
    }

    /// A uniform number in `[0, 1)` (xorshift64*; jitter needs no more).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The point `unit` (in `[0, 1)`) of attempt `attempt`'s window.
fn window(floor: Duration, ceiling: Duration, attempt: u32, unit: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_add(1).min(31));
    let upper = floor.saturating_mul(factor).min(ceiling).max(floor);
    floor + (upper - floor).mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(500);
    const CEILING: Duration = Duration::from_secs(20);

    #[test]
    fn windows_double_up_to_the_ceiling() {
        assert_eq!(window(FLOOR, CEILING, 0, 0.0), FLOOR);
        assert_eq!(window(FLOOR, CEILING, 0, 1.0), Duration::from_secs(1));
        assert_eq!(window(FLOOR, CEILING, 1, 1.0), Duration::from_secs(2));
        assert_eq!(window(FLOOR, CEILING, 3, 1.0), Duration::from_secs(8));
        assert_eq!(window(FLOOR, CEILING, 5, 1.0), CEILING);
        assert_eq!(window(FLOOR, CEILING, u32::MAX, 1.0), CEILING);
        // A ceiling below the floor means: always the floor.
        assert_eq!(window(FLOOR, Duration::ZERO, 4, 0.7), FLOOR);
    }

    #[test]
    fn delays_stay_in_their_window_and_spread_over_it() {
        let mut b = Backoff::new(FLOOR, CEILING);
        for attempt in 0..40 {
            let upper = window(FLOOR, CEILING, attempt, 1.0);
            let delays: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d >= FLOOR && *d <= upper));
            // Spread: some in the lower and some in the upper quarter of the window.
            let quarter = (upper - FLOOR) / 4;
            assert!(
                delays.iter().any(|d| *d < FLOOR + quarter),
                "attempt {attempt}"
            );
            assert!(
                delays.iter().any(|d| *d > upper - quarter),
                "attempt {attempt}"
            );
        }
    }
}
