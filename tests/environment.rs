//! The environment failing under the cache: a full disk, read-only and forbidden directories,
//! the directory deleted while open, planted symlinks, file modes.
// Raw system calls (fork, kill, waitpid, setuid, flock, rlimits) that std does not wrap.
#![allow(unsafe_code)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{child_spec, expect_success, spawn_child};
use tokcache::{Cache, Error, Storage};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops to user `nobody` in this (child) process.
fn become_nobody() {
    // SAFETY: plain syscalls on this process's credentials; checked for failure.
    unsafe {
        assert_eq!(libc::setgid(65534), 0);
        assert_eq!(libc::setuid(65534), 0);
    }
}

fn value(i: u64) -> String {
    format!("{i}:{}", "v".repeat(20_000))
}

/// Sets values until the first error; checks that it is a clear I/O error naming the cache's
/// file and that every value stored before it is still there. Returns how many were stored.
fn fill_until_error(dir: &Path) -> u64 {
    let cache = Cache::builder(dir)
        .compact_after_records(1000)
        .open()
        .unwrap();
    let mut stored = 0u64;
    let err = loop {
        match cache.set("test", &format!("k{stored}"), &value(stored)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the limit never bit");
    };
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(dir.to_str().unwrap()),
        "the error names the file: {msg}"
    );
    for i in 0..stored {
        assert_eq!(
            cache.get::<String>("test", &format!("k{i}")),
            Some(value(i))
        );
    }
    println!("stored {stored}: {msg}");
    stored
}

fn check_after_refill(dir: &Path, stored: u64) {
    let cache = Cache::open(dir).unwrap();
    for i in 0..stored {
        assert_eq!(
            cache.get::<String>("test", &format!("k{i}")),
            Some(value(i)),
            "entry {i} lost"
        );
    }
    let report = cache.verify(|_| {});
    assert!(report.is_sound(), "{:?}", report.problems);
}

#[test]
fn disk_full_on_a_small_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (not root?); the file-size-limit test covers EFBIG"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&mnt);
    let dir = mnt.join("cache");
    let stored = fill_until_error(&dir);
    assert!(stored > 10);
    check_after_refill(&dir, stored);
    // With space again (after clear_all frees the segments), the cache works.
    let cache = Cache::open(&dir).unwrap();
    cache.clear_all().unwrap();
    cache.set("test", "after", &value(1)).unwrap();
}

#[test]
#[ignore = "entry point of the child whose file size is limited"]
fn file_size_limit_child() {
    let dir = child_spec("TOKCACHE_FSIZE");
    // SAFETY: setrlimit/signal on this process only; SIGXFSZ ignored so writes fail with EFBIG.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 2 << 20,
            rlim_max: 2 << 20,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    fill_until_error(Path::new(&dir));
}

#[test]
fn file_size_limit_gives_an_error_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let out = expect_success(spawn_child(
        "file_size_limit_child",
        "TOKCACHE_FSIZE",
        dir.to_str().unwrap(),
    ));
    let stored: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("stored ")?.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no result from the child: {out}"));
    assert!(stored > 10, "{out}");
    check_after_refill(&dir, stored);
    Cache::open(&dir)
        .unwrap()
        .set("test", "after", &1u64)
        .unwrap();
}

#[test]
#[ignore = "entry point of a child that runs as another user"]
fn unprivileged_child() {
    let spec = child_spec("TOKCACHE_NOBODY");
    let (mode, dir) = spec.split_once('|').unwrap();
    if is_root() {
        become_nobody();
    }
    match mode {
        "read-only" => {
            let cache = Cache::open(dir).unwrap();
            assert_eq!(cache.storage(), Storage::ReadOnly);
            assert_eq!(
                cache.get::<u64>("test", "k"),
                Some(7),
                "a read-only cache serves reads"
            );
            cache.set("test", "new", &1u64).unwrap();
            assert_eq!(
                cache.get::<u64>("test", "new"),
                Some(1),
                "new entries stay in RAM"
            );
            assert!(matches!(cache.flush(), Err(Error::Degraded { .. })));
            // Writes to disk that cannot be done say so, and change nothing.
            assert!(matches!(
                cache.remove("test", "k"),
                Err(Error::Degraded { .. })
            ));
            assert_eq!(cache.get::<u64>("test", "k"), Some(7));
            assert!(cache.remove("test", "new").unwrap(), "a RAM entry goes");
            assert!(matches!(cache.clear_expired(), Err(Error::Degraded { .. })));
            assert!(matches!(cache.clear_all(), Err(Error::Degraded { .. })));
            assert_eq!(cache.get::<u64>("test", "k"), Some(7));
        }
        "forbidden" => {
            match Cache::open(dir) {
                Err(Error::Io { op, path, .. }) => {
                    assert_eq!(op, "create directory");
                    assert_eq!(path, Path::new(dir));
                }
                other => panic!("a directory it cannot create opened: {other:?}"),
            }
            let (cache, why) = Cache::builder(dir).open_or_ram_only();
            assert!(matches!(why, Some(Error::Io { .. })), "{why:?}");
            assert_eq!(cache.storage(), Storage::RamOnly);
            cache.set("test", "k", &2u64).unwrap();
            assert_eq!(cache.get::<u64>("test", "k"), Some(2));
            assert!(cache.flush().is_err());
            assert!(cache.clear_expired().is_err(), "no disk space to give back");
            // What a RAM-only cache holds, it can remove.
            assert!(cache.remove("test", "k").unwrap());
            cache.clear_all().unwrap();
        }
        other => panic!("{other}"),
    }
    println!("ok");
}

fn open_world_readable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

#[test]
fn read_only_directory_still_serves_reads() {
    let tmp = open_world_readable_tempdir();
    let dir = tmp.path().join("cache");
    // Shared with other users on purpose (the default, 0o600, keeps them out).
    Cache::builder(&dir)
        .file_mode(0o644)
        .open()
        .unwrap()
        .set("test", "k", &7u64)
        .unwrap();
    if !is_root() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            std::fs::set_permissions(e.unwrap().path(), std::fs::Permissions::from_mode(0o444))
                .unwrap();
        }
    }
    // As root the child drops to nobody, for whom the 0644 files are read-only.
    expect_success(spawn_child(
        "unprivileged_child",
        "TOKCACHE_NOBODY",
        &format!("read-only|{}", dir.display()),
    ));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn forbidden_directory_is_an_error_or_a_ram_only_cache_by_name() {
    let tmp = open_world_readable_tempdir();
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(
        &locked,
        std::fs::Permissions::from_mode(if is_root() { 0o700 } else { 0o500 }),
    )
    .unwrap();
    expect_success(spawn_child(
        "unprivileged_child",
        "TOKCACHE_NOBODY",
        &format!("forbidden|{}", locked.join("cache").display()),
    ));
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!locked.join("cache").exists());
}

#[test]
fn directory_deleted_while_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cache");
    let cache = Cache::builder(&dir).max_ram_entries(0).open().unwrap();
    for i in 0..100u64 {
        cache.set("test", &format!("k{i}"), &i).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    for i in 0..100u64 {
        assert_eq!(
            cache.get::<u64>("test", &format!("k{i}")),
            Some(i),
            "still served from the maps"
        );
    }
    // Writes go to the open (now unlinked) files or fail with an error; never a panic.
    let _ = cache.set("test", "late", &1u64);
    let _ = cache.compact();
    let fresh = Cache::open(&dir).unwrap();
    assert_eq!(fresh.storage(), Storage::Disk);
    assert_eq!(
        fresh.get::<u64>("test", "k1"),
        None,
        "documented: the deleted directory's entries are gone"
    );
    fresh.set("test", "k1", &1u64).unwrap();
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tks"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn planted_symlinks_are_never_followed_to_write() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let dir = tmp.path().join("cache");
    {
        let cache = Cache::open(&dir).unwrap();
        for i in 0..50u64 {
            cache.set("test", &format!("k{i}"), &i).unwrap();
        }
        // Seals the log (nothing expires): the entries are in a sealed segment, the new log
        // is empty.
        cache.clear_expired().unwrap();
    }
    // The active segment replaced by a symlink to the victim.
    let active = newest_segment(&dir);
    std::fs::remove_file(&active).unwrap();
    std::os::unix::fs::symlink(&victim, &active).unwrap();
    let cache = Cache::open(&dir).unwrap();
    let _ = cache.set("test", "new", &1u64);
    for i in 0..50u64 {
        assert_eq!(cache.get::<u64>("test", &format!("k{i}")), Some(i));
    }
    drop(cache);
    // The lock file replaced by a symlink.
    let lock = dir.join("tokcache.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    match Cache::open(&dir) {
        Err(Error::Io { op, path, .. }) => {
            assert_eq!((op, path), ("open lock file", lock));
        }
        other => panic!("opened through a symlinked lock file: {other:?}"),
    }
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "a symlink was followed to write"
    );
}

/// The process's umask, from /proc (reading it with umask(2) would change it meanwhile).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

/// Permission bits of every file in `dir`, and of `dir`.
fn modes(dir: &Path) -> (u32, Vec<(String, u32)>) {
    let mode = |m: std::fs::Metadata| m.permissions().mode() & 0o777;
    let files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                mode(e.metadata().unwrap()),
            )
        })
        .collect();
    (mode(std::fs::metadata(dir).unwrap()), files)
}

/// The keys are users' prompts: by default a cache's directory is 0700 and its files 0600;
/// `file_mode` opens them to a group (the directory gets search where reading is allowed).
#[test]
fn file_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let fill = |cache: &Cache| {
        for i in 0..20u64 {
            cache.set("test", &format!("k{i}"), &i).unwrap();
        }
        cache.compact().unwrap();
    };
    let private = tmp.path().join("a/b/private");
    fill(
        &Cache::builder(&private)
            .compact_after_records(5)
            .open()
            .unwrap(),
    );
    let (dir_mode, files) = modes(&private);
    assert_eq!(dir_mode, 0o700 & !umask());
    assert!(files.len() >= 5, "{files:?}");
    for (name, mode) in files {
        assert_eq!(mode, 0o600 & !umask(), "{name} is {mode:o}");
    }
    let group = tmp.path().join("group");
    fill(&Cache::builder(&group).file_mode(0o660).open().unwrap());
    let (dir_mode, files) = modes(&group);
    assert_eq!(dir_mode, 0o770 & !umask());
    for (name, mode) in files {
        assert_eq!(mode, 0o660 & !umask(), "{name} is {mode:o}");
    }
}

/// A directory that cannot be a cache's is an error naming the operation and the path, not a
/// cache that silently keeps nothing.
#[test]
fn open_fails_where_the_directory_cannot_be_used() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for dir in [file.clone(), file.join("under")] {
        match Cache::open(&dir) {
            Err(Error::Io { op, path, source }) => {
                assert_eq!(op, "create directory", "{dir:?}");
                assert_eq!(path, dir);
                let msg = Error::Io { op, path, source }.to_string();
                assert!(msg.contains("a-file"), "{msg}");
            }
            other => panic!("{dir:?} opened: {other:?}"),
        }
        let (cache, why) = Cache::builder(&dir).open_or_ram_only();
        assert!(why.is_some());
        assert_eq!(cache.storage(), Storage::RamOnly);
        cache.set("test", "k", &1u64).unwrap();
        assert_eq!(cache.get::<u64>("test", "k"), Some(1));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn invalid_ttls_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for hours in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
        let err = Cache::builder(tmp.path())
            .ttl_hours(hours)
            .open()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidSetting { name: "ttl", .. }),
            "{hours}: {err}"
        );
    }
    let cache = Cache::builder(tmp.path()).ttl_hours(0.001).open().unwrap();
    cache.set("test", "k", &1u64).unwrap();
    assert_eq!(cache.get::<u64>("test", "k"), Some(1));
    assert!(Cache::builder(tmp.path()).ttl_hours(0.0).open().is_ok());
}

/// Every file a cache creates, replaced by a symlink to a copy of itself elsewhere: opening,
/// writing, compacting and clearing never write through it.
#[test]
fn no_file_of_the_cache_is_written_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    {
        let cache = Cache::builder(&model)
            .compact_after_records(10)
            .open()
            .unwrap();
        for i in 0..30u64 {
            cache.set("test", &format!("k{i}"), &i).unwrap();
        }
        cache.compact().unwrap();
        cache.set("test", "in the log", &1u64).unwrap();
    }
    let mut names: Vec<String> = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for n in [
        "tokcache.ctl",
        "tokcache.lock",
        "compact.lock",
        "prefixes.tkp",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }
    assert!(names.iter().any(|x| x.ends_with(".tks")) && names.iter().any(|x| x.ends_with(".tki")));
    for name in &names {
        let dir = tmp.path().join(format!("with-link-{name}"));
        std::fs::create_dir(&dir).unwrap();
        for n in &names {
            std::fs::copy(model.join(n), dir.join(n)).unwrap();
        }
        let victim = tmp.path().join(format!("victim-{name}"));
        std::fs::rename(dir.join(name), &victim).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        let before = std::fs::read(&victim).unwrap();
        // The cache may refuse the link (an error) or work around it; either way the victim
        // is not written.
        if let Ok(cache) = Cache::open(&dir) {
            for i in 0..40u64 {
                let _ = cache.set("test", &format!("new{i}"), &i);
            }
            let _ = cache.compact();
            let _ = cache.clear_expired();
            let _ = cache.flush();
        }
        assert!(
            std::fs::read(&victim).unwrap() == before,
            "{name}: written through a symlink"
        );
    }
}
