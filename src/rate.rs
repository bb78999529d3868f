//! A token bucket, the rate limit of AMI actions and of SIP requests per address and user.

use std::time::{Duration, Instant};

/// A token bucket: `rate` actions per second with bursts of `burst`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// How long since the bucket was last used.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }

    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let t = Instant::now();
        let mut b = Bucket::new(2, t);
        assert!(b.take(10, 2, t));
        assert!(b.take(10, 2, t));
        assert!(!b.take(10, 2, t));
        assert!(b.take(10, 2, t + Duration::from_millis(100)));
        assert!(!b.take(10, 2, t + Duration::from_millis(100)));
    }
}
