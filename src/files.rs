//! The cache directory and how its files are created, written and synced: every file the
//! cache writes is opened here (never through a symlink, with the cache's permission bits).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Where the cache's files live and with which permission bits new ones are made.
#[derive(Clone, Debug)]
pub(crate) struct Dir {
    pub path: PathBuf,
    pub mode: u32,
}

impl Dir {
    /// Creates the directory and its missing parents (with [`Dir::dir_mode`]), or checks that
    /// it is one: a regular file or a path under one is an error, not a directory to work in.
    pub(crate) fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(self.dir_mode())
            .create(&self.path)
            .ctx("create directory", &self.path)?;
        // `recursive` accepts an existing directory, and also a symlink to one (the user's
        // choice of path); anything else has failed above.
        Ok(())
    }

    /// The permission bits of a directory the cache creates: the files' bits, plus search
    /// (`x`) for every class that may read.
    pub(crate) fn dir_mode(&self) -> u32 {
        self.mode | (self.mode & 0o444) >> 2
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates a file that compaction writes before it may publish it: `NAME.NONCE.part`
    /// (the nonce keeps two compactors' files apart), renamed to `NAME` on commit.
    pub(crate) fn create_staged(&self, name: &str, nonce: u64) -> Result<Staged> {
        let path = self.join(&format!("{name}.{nonce:016x}{STAGED_SUFFIX}"));
        let file = file_options(self.mode)
            .create_new(true)
            .open(&path)
            .ctx("create", &path)?;
        Ok(Staged {
            file,
            path,
            target: self.join(name),
            published: false,
        })
    }

    /// [`Dir::create_staged`] with the whole content, written and made durable.
    pub(crate) fn write_staged(&self, name: &str, nonce: u64, bytes: &[u8]) -> Result<Staged> {
        let staged = self.create_staged(name, nonce)?;
        (&staged.file)
            .write_all(bytes)
            .and_then(|()| sync_file(&staged.file, false))
            .ctx("write", &staged.path)?;
        Ok(staged)
    }

    /// Writes a whole new file atomically: `NAME.new`, fsync, rename over `NAME`, fsync the dir.
    pub(crate) fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_new_file(&self.join(name), bytes, self.mode)
    }

    pub(crate) fn sync(&self) -> Result<()> {
        sync_dir(&self.path)
    }
}

const STAGED_SUFFIX: &str = ".part";

/// A file written by compaction under a temporary name (see [`Dir::create_staged`]), removed
/// when dropped unless published.
#[derive(Debug)]
pub(crate) struct Staged {
    pub file: File,
    pub path: PathBuf,
    /// The name it gets when published.
    target: PathBuf,
    published: bool,
}

impl Staged {
    /// Renames it to its own name (the caller syncs the directory).
    pub(crate) fn publish(mut self) -> Result<()> {
        fs::rename(&self.path, &self.target).ctx("rename into place", &self.target)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Whether `name` is a file compaction stages (a leftover, when no compaction runs).
pub(crate) fn is_staged(name: &str) -> bool {
    (name.starts_with("seg-") || name.starts_with("index-")) && name.ends_with(STAGED_SUFFIX)
}

/// Whether `name` is a whole new file being written ([`Dir::write_file`]: `NAME.new`) of one
/// of the cache's files: a leftover of a process that died before renaming it, when no
/// process holds the write lock (every such file is written under it).
pub(crate) fn is_new_file(name: &str) -> bool {
    name.strip_suffix(".new").is_some_and(|n| {
        n.ends_with(".tki")
            || n.ends_with(".ctl")
            || n.ends_with(".tkp")
            || n == "tokcache.migrating"
    })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(feature = "killpoints")]
    crate::crashsim::dir_synced(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// `fsync` of one of the cache's files (`fdatasync` with `data_only`): every file the cache
/// makes durable goes through here (the machine-crash test records each, see `crashsim.rs`).
pub(crate) fn sync_file(file: &File, data_only: bool) -> std::io::Result<()> {
    #[cfg(feature = "killpoints")]
    crate::crashsim::file_synced(file);
    if data_only {
        file.sync_data()
    } else {
        file.sync_all()
    }
}

/// Options to open one of the cache's files for reading and writing: `mode` the permission
/// bits if it is created, never through a symlink. The caller says whether to create it.
pub(crate) fn file_options(mode: u32) -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW);
    options
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    let _ = fs::remove_file(&staging);
    let mut file = file_options(mode)
        .create_new(true)
        .open(&staging)
        .ctx("create", &staging)?;
    let written = file.write_all(bytes).and_then(|()| sync_file(&file, false));
    if let Err(e) = written {
        let _ = fs::remove_file(&staging);
        return Err(crate::Error::io("write", &staging, e));
    }
    kill_point!("file.staged");
    fs::rename(&staging, path).ctx("rename into place", path)?;
    kill_point!("file.renamed");
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Opens `dir`'s shared file `name`, or makes it: `len` bytes with their blocks allocated (a
/// first write through a mapping into a hole of a sparse file on a full file system is
/// `SIGBUS`) and `header` at its start, under a temporary name, then linked into place, so
/// that it is never replaced and every process maps the one file. Another process that made
/// it first wins.
pub(crate) fn open_or_make_whole(dir: &Dir, name: &str, len: u64, header: &[u8]) -> Result<File> {
    let path = dir.join(name);
    match file_options(dir.mode).open(&path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::Error::io("open", &path, e)),
    }
    let tmp = dir.join(&format!("{name}.{}.new", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let f = file_options(dir.mode)
        .create_new(true)
        .open(&tmp)
        .ctx("create", &tmp)?;
    let made = crate::sys::allocate(&f, 0, len)
        .and_then(|()| f.write_all_at(header, 0))
        .and_then(|()| fs::hard_link(&tmp, &path));
    let _ = fs::remove_file(&tmp);
    match made {
        Ok(()) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            file_options(dir.mode).open(&path).ctx("open", &path)
        }
        Err(e) => Err(crate::Error::io("create", &path, e)),
    }
}

/// Writes `bytes` at `offset` of the log (beyond the committed length, so no reader sees them
/// until the length is published).
pub(crate) fn append_at(file: &File, path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    file.write_all_at(bytes, offset)
        .ctx("append to segment", path)
}
