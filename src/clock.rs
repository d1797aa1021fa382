//! Time, behind a trait so tests can move it.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A source of "now", in seconds since the Unix epoch (the original's `time.time()`).
pub trait Clock: Send + Sync + 'static {
    /// Now, in seconds since the Unix epoch.
    fn now(&self) -> f64;

    /// "Now" to within a few milliseconds, for expiry checks on the read path (default: `now`).
    fn now_coarse(&self) -> f64 {
        self.now()
    }
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn now_coarse(&self) -> f64 {
        crate::sys::coarse_realtime().unwrap_or_else(|| self.now())
    }
}

/// A clock that moves only when told to; for tests of expiry.
#[derive(Debug)]
pub struct ManualClock(Mutex<f64>);

impl ManualClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self(Mutex::new(SystemClock.now()))
    }

    /// Starts at `secs` since the Unix epoch.
    pub fn at(secs: f64) -> Self {
        Self(Mutex::new(secs))
    }

    /// Moves to `secs` since the Unix epoch.
    pub fn set(&self, secs: f64) {
        *self.0.lock() = secs;
    }

    /// Moves `secs` seconds forward (backward if negative).
    pub fn advance(&self, secs: f64) {
        *self.0.lock() += secs;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        *self.0.lock()
    }
}
