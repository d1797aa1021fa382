//! The write lock `tokcache.lock`: an fs2 (flock) exclusive lock held for every append, for
//! compaction and for clearing. Readers never lock. fs2 is called by full path because std's own
//! `File::lock*` methods of the same names would otherwise take precedence.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

pub(crate) const FILE_NAME: &str = "tokcache.lock";

#[derive(Debug)]
pub(crate) struct LockFile {
    file: File,
    path: PathBuf,
}

/// Holds the exclusive lock until dropped.
pub(crate) struct Locked<'a>(&'a LockFile);

impl LockFile {
    pub(crate) fn open(dir: &Path, mode: u32) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .ctx("open lock file", &path)?;
        Ok(Self { file, path })
    }

    /// Blocks until this process holds the exclusive lock.
    pub(crate) fn exclusive(&self) -> Result<Locked<'_>> {
        fs2::FileExt::lock_exclusive(&self.file).ctx("lock", &self.path)?;
        Ok(Locked(self))
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Err(e) = fs2::FileExt::unlock(&self.0.file) {
            log::warn!("cannot unlock {}: {e}", self.0.path.display());
        }
    }
}
