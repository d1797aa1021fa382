//! Without the `redis` feature there is no shared tier: [`Tier`] has no values, so every
//! `Option<Tier>` is `None` and these methods are never called.

use std::sync::Arc;

use super::{Settings, SharedStats};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::legacy::OriginalEntry;
use crate::value::Stored;

pub(crate) enum Tier {}

#[allow(clippy::unused_self, clippy::needless_pass_by_value)]
impl Tier {
    pub(crate) fn open(_: &Settings, _: Arc<dyn Clock>, _: f64) -> Result<Self> {
        Err(Error::InvalidSetting {
            name: "redis",
            reason: "this build of tokcache has no shared tier (feature `redis`)".into(),
        })
    }

    pub(crate) fn get(&self, _: &str, _: &Key<'_>) -> Option<OriginalEntry> {
        match *self {}
    }

    pub(crate) fn count_into(&self, _: Arc<crate::pool::Slot>) {
        match *self {}
    }

    pub(crate) fn put(&self, _: &str, _: &Key<'_>, _: &Stored, _: f64) {
        match *self {}
    }

    pub(crate) fn put_original(&self, _: &OriginalEntry) {
        match *self {}
    }

    pub(crate) fn remove(&self, _: &str, _: &Key<'_>) {
        match *self {}
    }

    pub(crate) fn flush(&self) {
        match *self {}
    }

    pub(crate) fn clear(&self) -> Result<u64> {
        match *self {}
    }

    pub(crate) fn stats(&self) -> SharedStats {
        match *self {}
    }
}
