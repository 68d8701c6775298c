//! Reconnect delays: exponential backoff with full jitter (AWS Architecture Blog, "Exponential
//! Backoff And Jitter"): attempt `n` waits a uniform random time in `[0, min(max, initial·2ⁿ)]`,
//! so a fleet of agents that lost their aggregator at once does not reconnect in lockstep.
//! The random source is a seeded SplitMix64, so a test (or the simulator) replays the same
//! delays from the same seed.

use std::time::Duration;

/// Backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// Delay state for one peer.
#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            cfg,
            attempt: 0,
            rng: SplitMix64(seed),
        }
    }

    /// A seed that differs per process and per call, for production.
    pub fn random_seed() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .cfg
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cfg.max);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.below(nanos.saturating_add(1)))
    }

    /// After a session that worked: start again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough for jitter.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), by Lemire's multiply-shift; the bias is below 2⁻³² for
    /// any delay, irrelevant for jitter.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_max_and_seed_replays() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut a = Backoff::new(cfg, 7);
        let mut b = Backoff::new(cfg, 7);
        for n in 0..10u32 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(Duration::from_secs(1));
            let d = a.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            assert_eq!(d, b.next_delay());
        }
        a.reset();
        assert!(a.next_delay() <= Duration::from_millis(100));
        // Full jitter spreads: 200 draws under a 1 s ceiling are not all in one tenth of it.
        let mut c = Backoff::new(cfg, 1);
        let draws: Vec<_> = (0..200).map(|_| c.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(900)));
    }
}
