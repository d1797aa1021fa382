//! Time, behind a trait so tests can move it.

use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A source of "now", in seconds since the Unix epoch (the original's `time.time()`).
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// /// A clock that ticks a second per call.
/// struct Ticking(AtomicU64);
/// impl tokcache::Clock for Ticking {
///     fn now(&self) -> f64 {
///         1.9e9 + self.0.fetch_add(1, Ordering::Relaxed) as f64
///     }
/// }
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::builder(dir.path()).clock(Arc::new(Ticking(AtomicU64::new(0)))).open()?;
/// cache.set("test", "k", &1)?;
/// assert!(cache.get_ref("test", "k").unwrap().timestamp() >= 1.9e9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Now, in seconds since the Unix epoch.
    ///
    /// ```
    /// use tokcache::{Clock, SystemClock};
    /// let now = SystemClock.now();
    /// assert!(now > 1.7e9); // after 2023
    /// ```
    fn now(&self) -> f64;

    /// "Now" to within a few milliseconds, for expiry checks on the read path (default: `now`).
    ///
    /// ```
    /// use tokcache::{Clock, ManualClock};
    /// let clock = ManualClock::at(1.9e9);
    /// assert_eq!(clock.now_coarse(), clock.now()); // the default: now
    /// ```
    fn now_coarse(&self) -> f64 {
        self.now()
    }
}

/// The system clock.
///
/// ```
/// use tokcache::{Clock, SystemClock};
/// let (a, b) = (SystemClock.now(), SystemClock.now());
/// assert!(b >= a);
/// assert!((SystemClock.now_coarse() - b).abs() < 1.0);
/// ```
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
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tokcache::{Cache, Clock, ManualClock};
/// let clock = Arc::new(ManualClock::at(1.9e9));
/// # let dir = tempfile::tempdir()?;
/// let cache = Cache::builder(dir.path()).ttl(Duration::from_secs(10)).clock(clock.clone()).open()?;
/// cache.set("test", "k", &1)?;
/// clock.advance(11.0);
/// assert_eq!(cache.get::<i32>("test", "k"), None);
/// assert_eq!(clock.now(), 1.9e9 + 11.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ManualClock(Mutex<f64>);

impl ManualClock {
    /// Starts at the system's current time.
    ///
    /// ```
    /// use tokcache::{Clock, ManualClock, SystemClock};
    /// let clock = ManualClock::new();
    /// assert!((clock.now() - SystemClock.now()).abs() < 60.0);
    /// ```
    pub fn new() -> Self {
        Self(Mutex::new(SystemClock.now()))
    }

    /// Starts at `secs` since the Unix epoch.
    ///
    /// ```
    /// use tokcache::{Clock, ManualClock};
    /// assert_eq!(ManualClock::at(1.9e9).now(), 1.9e9);
    /// ```
    pub fn at(secs: f64) -> Self {
        Self(Mutex::new(secs))
    }

    /// Moves to `secs` since the Unix epoch.
    ///
    /// ```
    /// use tokcache::{Clock, ManualClock};
    /// let clock = ManualClock::at(1.9e9);
    /// clock.set(2.0e9);
    /// assert_eq!(clock.now(), 2.0e9);
    /// ```
    pub fn set(&self, secs: f64) {
        *self.0.lock() = secs;
    }

    /// Moves `secs` seconds forward (backward if negative).
    ///
    /// ```
    /// use tokcache::{Clock, ManualClock};
    /// let clock = ManualClock::at(1.9e9);
    /// clock.advance(1.5);
    /// clock.advance(-0.5);
    /// assert_eq!(clock.now(), 1.9e9 + 1.0);
    /// ```
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
