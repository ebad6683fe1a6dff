//! Exponential backoff with jitter for reconnects and retries, on top of
//! `backon`: replicas that lost the same Redis or Postgres at the same moment
//! spread their retries instead of reconnecting in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays start at `first` and double up to `max`; each is then
    /// stretched by a random 0-100 % (backon's jitter), so a delay lies in
    /// `[d, 2d)`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay to wait now; the next one is about twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts or total time the iterator never ends.
        self.delays.next().unwrap_or(self.max)
    }

    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

impl Clone for Backoff {
    /// A fresh sequence with the same bounds.
    fn clone(&self) -> Self {
        Self {
            builder: self.builder,
            delays: self.builder.build(),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let first = Duration::from_millis(100);
        let max = Duration::from_millis(350);
        let mut b = Backoff::new(first, max);
        let bases = [100, 200, 350, 350, 350];
        for base in bases {
            let delay = b.next_delay().as_millis() as u64;
            assert!(
                (base..2 * base).contains(&delay),
                "{delay} ms outside [{base}, {})",
                2 * base
            );
        }
        b.reset();
        assert!(b.next_delay() < 2 * first);
    }

    #[test]
    fn two_replicas_do_not_retry_in_lockstep() {
        // 20 draws each from two sequences: identical only by a vanishing chance.
        let draw = || {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            (0..20).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(draw(), draw());
    }
}
