//! Kill points: the named steps of every multi-step operation (appending a record, compacting,
//! sealing and trimming a log, rewriting segments, adding a prefix, migrating the original's
//! files, ...), where the crash tests kill a process to check that no other process is harmed
//! and nothing published is lost. docs/reliability.md lists them, and a test fails if one is
//! missing there or has no test that kills at it.
//!
//! They exist only in builds with the feature `killpoints` (the crate's own tests turn it on);
//! elsewhere [`kill_point!`] expands to nothing. In such a build, `TOKCACHE_KILL_AT=NAME` kills
//! the process with SIGKILL the first time any thread reaches the point `NAME`, and
//! `TOKCACHE_KILL_AT=NAME@N` the `N`-th time.

/// Marks a kill point (see the module's doc).
macro_rules! kill_point {
    ($name:literal) => {
        #[cfg(feature = "killpoints")]
        $crate::killpoint::reached($name);
    };
}

#[cfg(feature = "killpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The point this process dies at, and at which of its visits.
    fn target() -> Option<&'static (String, u64)> {
        static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let spec = std::env::var("TOKCACHE_KILL_AT").ok()?;
                Some(match spec.split_once('@') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1)),
                    None => (spec, 1),
                })
            })
            .as_ref()
    }

    /// Called at the point `name`: dies there if it is the one asked for, the time asked for.
    pub(crate) fn reached(name: &'static str) {
        static VISITS: AtomicU64 = AtomicU64::new(0);
        if let Some((target, nth)) = target()
            && target == name
            && VISITS.fetch_add(1, Ordering::AcqRel) + 1 == *nth
        {
            crate::sys::kill_self();
        }
    }
}

#[cfg(feature = "killpoints")]
pub(crate) use armed::reached;
