//! `cargo bench`: every row of the performance targets (docs/performance.md, "Performance
//! targets"), for tokcache and, in the same run, the original's design (and LMDB/redb with
//! `--features compare`). Medians, p99 and means of per-operation timings; ratios tokcache / anchor. Sizes: `TOKCACHE_BENCH_SIZES` (default
//! `10000,1000000`); the original's one-file-per-entry design is measured up to
//! `TOKCACHE_BENCH_ORIGINAL_MAX` entries (default 100000: 1M files take minutes and GBs).
//! The report is printed and written to `target/bench-report.md`.
// Raw system calls (fork, kill, waitpid, setuid, flock, rlimits) that std does not wrap.
#![allow(unsafe_code)]

mod engines;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use engines::{Engine, Original, Tok};

fn key(i: u64) -> String {
    format!("tokenizer:cl100k_base:{i:039}") // 61 characters, like the anchors' keys
}

/// Absent key `j` (`j < n` for `n` present keys): as long as a present key, and sorting among
/// them (the 38 leading digits of a present key, then a letter), so that an ordered store
/// (LMDB, redb) searches its tree for it as for any prompt it has not seen. (`key(n + j)`
/// would sort after every present key: always the same, cached, path down the tree.)
fn absent_key(j: u64) -> String {
    let letter = char::from(b'a' + (j % 10) as u8);
    format!("tokenizer:cl100k_base:{:038}{letter}", j / 10)
}

fn big_key(i: u64) -> String {
    format!(
        "tokenizer:cl100k_base:{i:08}:{}",
        "lorem ipsum dolor sit amet ".repeat(303)
    )
}

fn value(i: u64) -> u64 {
    i.wrapping_mul(2654435761) % 100_000
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Per-operation timings in nanoseconds.
#[derive(Default)]
struct Timings(Vec<u64>);

/// What timing an empty closure costs (two clock reads), subtracted from every sample.
fn timer_overhead() -> u64 {
    static OVERHEAD: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let mut v: Vec<u64> = (0..200_000)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(());
                t.elapsed().as_nanos() as u64
            })
            .collect();
        v.sort_unstable();
        v[v.len() / 2]
    })
}

impl Timings {
    fn time<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let overhead = timer_overhead();
        let t = Instant::now();
        let r = std::hint::black_box(f());
        self.0
            .push((t.elapsed().as_nanos() as u64).saturating_sub(overhead));
        r
    }
    fn summary(&mut self) -> (f64, f64, f64, f64) {
        self.0.sort_unstable();
        let n = self.0.len().max(1);
        let at = |q: f64| {
            self.0
                .get(((n as f64 * q) as usize).min(n - 1))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        let mean = self.0.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
        (at(0.5), at(0.99), mean, at(1.0))
    }
    fn to_line(&self) -> String {
        self.0
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn from_line(s: &str) -> Self {
        Timings(
            s.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect(),
        )
    }
}

struct Row {
    op: &'static str,
    entries: u64,
    engine: &'static str,
    median: f64,
    p99: f64,
    mean: f64,
    max: f64,
}

fn engine_names() -> Vec<&'static str> {
    let mut v = vec!["tokcache", "original"];
    if cfg!(feature = "compare") {
        v.extend(["lmdb", "redb"]);
    }
    v
}

/// Runs `f` with the engine called `name`.
macro_rules! with_engine {
    ($name:expr, $f:ident ( $($arg:expr),* )) => {
        match $name {
            "tokcache" => $f::<Tok>($($arg),*),
            "original" => $f::<Original>($($arg),*),
            #[cfg(feature = "compare")]
            "lmdb" => $f::<engines::Lmdb>($($arg),*),
            #[cfg(feature = "compare")]
            "redb" => $f::<engines::Redb>($($arg),*),
            other => panic!("unknown engine {other}"),
        }
    };
}

// ---- child processes ----

fn child_get<E: Engine>(dir: &Path, n: u64, count: u64, seed: u64) -> Timings {
    gets(&E::open(dir, false), n, count, seed)
}

/// `count` gets of random existing keys, each timed and checked.
fn gets<E: Engine>(e: &E, n: u64, count: u64, seed: u64) -> Timings {
    let mut rng = Rng(seed | 1);
    let mut t = Timings::default();
    for _ in 0..count {
        let i = rng.next() % n;
        let k = key(i);
        let got = t.time(|| e.get(&k));
        assert_eq!(got, Some(value(i)), "wrong value");
    }
    t
}

/// Gets of random keys in batches of [`BATCH`]; one sample per batch: its time per key.
fn child_get_many<E: Engine>(dir: &Path, n: u64, count: u64, seed: u64) -> Timings {
    let e = E::open(dir, false);
    let mut rng = Rng(seed | 1);
    let mut t = Timings::default();
    for _ in 0..count / BATCH as u64 {
        let ids: Vec<u64> = (0..BATCH).map(|_| rng.next() % n).collect();
        let keys: Vec<String> = ids.iter().map(|&i| key(i)).collect();
        let got = t.time(|| e.get_many(&keys));
        let want: Vec<Option<u64>> = ids.iter().map(|&i| Some(value(i))).collect();
        assert_eq!(got, want, "wrong value");
        let per_key = t.0.last_mut().unwrap();
        *per_key /= BATCH as u64;
    }
    t
}

/// Keys per batch in the `get_many` row.
const BATCH: usize = 64;

fn child_set<E: Engine>(dir: &Path, _n: u64, count: u64, seed: u64) -> Timings {
    let e = E::open(dir, false);
    let mut t = Timings::default();
    for j in 0..count {
        let k = format!("tokenizer:cl100k_base:w{seed:03}-{j:035}");
        t.time(|| e.set(&k, j));
    }
    t
}

/// Memory of a process that opened the cache and did `count` gets, read while it is open.
fn child_rss<E: Engine>(dir: &Path, n: u64, count: u64, seed: u64) -> Timings {
    let e = E::open(dir, false);
    gets(&e, n, count, seed);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0u64)
    };
    let t = Timings(vec![kb("RssAnon:"), kb("RssFile:")]);
    drop(e);
    t
}

/// tokcache only: `count` compactions in a row, each timed.
fn child_compact(dir: &Path, count: u64) -> Timings {
    let cache = tokcache::Cache::builder(dir)
        .max_ram_entries(0)
        .open()
        .unwrap();
    let mut t = Timings::default();
    for _ in 0..count {
        t.time(|| cache.compact().unwrap());
    }
    t
}

fn child_main(spec: &str) {
    let parts: Vec<&str> = spec.split(';').collect();
    let (op, engine, dir) = (parts[0], parts[1], Path::new(parts[2]));
    let [n, count, seed] = [3, 4, 5].map(|i| parts[i].parse::<u64>().unwrap());
    let t = match op {
        "get" => with_engine!(engine, child_get(dir, n, count, seed)),
        "get_many" => with_engine!(engine, child_get_many(dir, n, count, seed)),
        "set" => with_engine!(engine, child_set(dir, n, count, seed)),
        "rss" => with_engine!(engine, child_rss(dir, n, count, seed)),
        "compact" => child_compact(dir, count),
        _ => panic!("unknown child op {op}"),
    };
    println!("{}", t.to_line());
}

fn spawn(op: &str, engine: &str, dir: &Path, n: u64, count: u64, seed: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(
            "TOKCACHE_BENCH_CHILD",
            format!("{op};{engine};{};{n};{count};{seed}", dir.display()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn collect(children: Vec<std::process::Child>) -> Timings {
    let mut all = Timings::default();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "bench child failed");
        all.0
            .extend(Timings::from_line(&String::from_utf8_lossy(&out.stdout)).0);
    }
    all
}

// ---- the rows ----

/// Bytes the directory's files take on disk (allocated blocks: preallocated, never-written
/// space of the active segment is sparse and not counted).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// The machine's floor for a lookup in a cache of `bytes`: one dependent random read (a
/// pointer chase over 64-byte lines) in a read-only shared mapping of a file that large, in the
/// page cache. A disk-tier hit needs at least two such reads (index slot, then record), one more
/// for a tail-table entry.
fn dependent_read_floor(root: &Path, bytes: u64) -> Timings {
    let path = root.join("floor.bin");
    let lines = (bytes / 64).max(2) as usize;
    // Sattolo's shuffle: one cycle through every line.
    let mut next: Vec<u32> = (0..lines as u32).collect();
    let mut rng = Rng(0x5eed);
    for i in (1..lines).rev() {
        let j = (rng.next() % i as u64) as usize;
        next.swap(i, j);
    }
    let mut buf = vec![0u8; lines * 64];
    for (i, &n) in next.iter().enumerate() {
        buf[i * 64..i * 64 + 4].copy_from_slice(&n.to_le_bytes());
    }
    std::fs::write(&path, &buf).unwrap();
    drop(buf);
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY (bench only): the file is ours, not changed while mapped.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let read = |i: usize| u32::from_le_bytes(map[i * 64..i * 64 + 4].try_into().unwrap()) as usize;
    let mut at = 0;
    for _ in 0..lines.min(4_000_000) {
        at = read(at); // fault every page in first
    }
    let mut t = Timings::default();
    for _ in 0..300 {
        let start = Instant::now();
        for _ in 0..1000 {
            at = read(at);
        }
        t.0.push(start.elapsed().as_nanos() as u64 / 1000);
    }
    std::hint::black_box(at);
    drop(map);
    let _ = std::fs::remove_file(&path);
    t
}

fn build<E: Engine>(dir: &Path, n: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let e = E::open(dir, false);
    e.load(&mut (0..n).map(|i| (key(i), value(i))));
}

fn measure<E: Engine>(
    engine: &'static str,
    root: &Path,
    n: u64,
    rows: &mut Vec<Row>,
    notes: &mut String,
) {
    let dir = root.join(format!("{engine}-{n}"));
    let t = Instant::now();
    build::<E>(&dir, n);
    if engine == "tokcache" {
        // Measured as the writers left it: with whatever tail the last automatic compaction left.
        let bytes = dir_bytes(&dir);
        let _ = writeln!(
            notes,
            "- tokcache, {n} entries of 61-byte keys and integer values: built in {:.1} s; {} bytes on disk, {:.1} bytes per entry ({:.1} over key + 8-byte value)",
            t.elapsed().as_secs_f64(),
            bytes,
            bytes as f64 / n as f64,
            bytes as f64 / n as f64 - 69.0
        );
    }
    if engine == "tokcache" {
        let (median, p99, mean, max) = dependent_read_floor(root, dir_bytes(&dir)).summary();
        rows.push(Row {
            op: "one dependent read in a mapping of the cache's size",
            entries: n,
            engine: "machine floor",
            median,
            p99,
            mean,
            max,
        });
    }
    let mut push = |op, mut t: Timings| {
        let (median, p99, mean, max) = t.summary();
        rows.push(Row {
            op,
            entries: n,
            engine,
            median,
            p99,
            mean,
            max,
        });
    };

    let mut t = Timings::default();
    for _ in 0..15 {
        drop(t.time(|| E::open(&dir, false)));
    }
    push("open", t);

    push(
        "get, hit from disk tier, fresh process",
        collect(vec![spawn("get", engine, &dir, n, 200_000, 7)]),
    );

    push(
        "get, hit, in batches of 64 keys (get_many), per key, fresh process",
        collect(vec![spawn("get_many", engine, &dir, n, 200_000, 7)]),
    );

    let e = E::open(&dir, false);
    let mut t = Timings::default();
    let mut rng = Rng(11);
    for _ in 0..100_000u64 {
        let k = absent_key(rng.next() % n);
        assert!(t.time(|| e.get(&k)).is_none());
    }
    push("get, miss", t);
    drop(e);

    let e = E::open(&dir, true);
    let hot: Vec<String> = (0..1000).map(|i| key(i * (n / 1000).max(1))).collect();
    for k in &hot {
        e.get(k);
    }
    let mut t = Timings::default();
    for r in 0..200 {
        for k in &hot[..] {
            if r % 2 == 0 {
                t.time(|| e.get(k));
            } else {
                e.get(k);
            }
        }
    }
    push("get, RAM-tier hit", t);

    let mut t = Timings::default();
    for j in 0..50_000u64 {
        let k = format!("tokenizer:cl100k_base:s-{j:037}");
        t.time(|| e.set(&k, j));
    }
    push("set, no fsync", t);
    drop(e);

    if E::MULTI_PROCESS {
        let writers = (0..4)
            .map(|w| spawn("set", engine, &dir, n, 20_000, 100 + w))
            .collect();
        push("set, 4 writer processes", collect(writers));
    } else {
        let _ = writeln!(
            notes,
            "- {engine}: no row for 4 writer processes (one process at a time only)"
        );
    }

    if engine == "tokcache" {
        let (sets, compactions) = sets_during_compactions(&dir, n);
        push("set while another process compacts", sets);
        push("compaction, by that other process", compactions);
    }

    if engine == "tokcache" {
        let rss = collect(vec![spawn("rss", engine, &dir, n, 100_000, 9)]);
        let _ = writeln!(
            notes,
            "- tokcache, {n} entries: a process that opened the cache and did 100k random gets: {} KiB private (RssAnon), {} KiB of shared mapped pages (RssFile)",
            rss.0[0], rss.0[1]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// tokcache only: a child process compacts the cache five times in a row while this one, a
/// worker with the default settings, overwrites entries at a steady 50,000 sets a second (one
/// per 20 us, more than two cores tokenize). Returns the sets' and the compactions' timings.
fn sets_during_compactions(dir: &Path, n: u64) -> (Timings, Timings) {
    let e = Tok::open(dir, false);
    let mut child = spawn("compact", "tokcache", dir, n, 5, 0);
    let mut t = Timings::default();
    let mut i = 0;
    let pace = std::time::Duration::from_micros(20);
    while child.try_wait().unwrap().is_none() {
        for _ in 0..64 {
            let start = Instant::now();
            let k = key(i % n);
            t.time(|| e.set(&k, value(i % n)));
            i += 1;
            while start.elapsed() < pace {
                std::hint::spin_loop();
            }
        }
    }
    (t, collect(vec![child]))
}

fn measure_big_keys<E: Engine>(
    engine: &'static str,
    root: &Path,
    rows: &mut Vec<Row>,
    notes: &mut String,
) {
    if E::MAX_KEY < big_key(0).len() {
        let _ = writeln!(
            notes,
            "- {engine}: no 8 KB key row (keys are limited to {} bytes)",
            E::MAX_KEY
        );
        return;
    }
    let dir = root.join(format!("{engine}-8k"));
    let _ = std::fs::remove_dir_all(&dir);
    let e = E::open(&dir, false);
    let keys: Vec<String> = (0..2000).map(big_key).collect();
    e.load(
        &mut keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), value(i as u64))),
    );
    drop(e);
    let e = E::open(&dir, false);
    // Two ways a caller holds its key: just built (a prompt it formatted a moment ago, in the
    // CPU cache, as in the 61-byte rows) or cold (one of 16 MB of keys it keeps around).
    for (op, fresh) in [
        ("get hit, 8 KB key just built by the caller", true),
        ("get hit, 8 KB key cold in the caller's memory", false),
    ] {
        let mut t = Timings::default();
        let mut rng = Rng(3);
        for _ in 0..50_000 {
            let i = (rng.next() % 2000) as usize;
            let copy;
            let k = if fresh {
                copy = keys[i].clone();
                &copy
            } else {
                &keys[i]
            };
            assert_eq!(t.time(|| e.get(k)), Some(value(i as u64)));
        }
        let (median, p99, mean, max) = t.summary();
        rows.push(Row {
            op,
            entries: 2000,
            engine,
            median,
            p99,
            mean,
            max,
        });
    }
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Disk per entry for the typical token-count workload: keys of 2-8 KB prompts, integer values.
fn typical_disk(root: &Path, notes: &mut String) {
    let dir = root.join("typical");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = Tok::open(&dir, false);
    let mut rng = Rng(11);
    let mut payload = 0u64;
    let n = 20_000;
    for i in 0..n {
        let len = 2048 + (rng.next() % 6144) as usize;
        let mut k = format!("tokenizer:cl100k_base:{i}:");
        while k.len() < len {
            k.push_str("the quick brown fox jumps over the lazy dog. ");
        }
        k.truncate(len);
        payload += k.len() as u64 + 8;
        cache.set(&k, i);
    }
    cache.0.compact().unwrap();
    let bytes = dir_bytes(&dir);
    let _ = writeln!(
        notes,
        "- typical token-count workload ({n} keys of 2-8 KB, integer values): {:.1} bytes per entry over key + value ({} bytes on disk for {} bytes of keys and values)",
        (bytes - payload) as f64 / n as f64,
        bytes,
        payload
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Ok(spec) = std::env::var("TOKCACHE_BENCH_CHILD") {
        return child_main(&spec);
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test harness probes
    }
    let sizes: Vec<u64> = std::env::var("TOKCACHE_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let original_max: u64 = std::env::var("TOKCACHE_BENCH_ORIGINAL_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&root).unwrap();
    let mut rows = Vec::new();
    let mut notes = String::new();
    for &n in &sizes {
        for engine in engine_names() {
            if engine == "original" && n > original_max {
                let _ = writeln!(
                    notes,
                    "- original design not measured at {n} entries (TOKCACHE_BENCH_ORIGINAL_MAX={original_max})"
                );
                continue;
            }
            eprintln!("measuring {engine} at {n} entries");
            with_engine!(engine, measure(engine, &root, n, &mut rows, &mut notes));
            report(&rows, &notes, &root);
        }
    }
    for engine in engine_names() {
        with_engine!(
            engine,
            measure_big_keys(engine, &root, &mut rows, &mut notes)
        );
        report(&rows, &notes, &root);
    }
    typical_disk(&root, &mut notes);

    print!("{}", report(&rows, &notes, &root));
}

/// Renders the table (ratios against tokcache's median) and writes it to
/// `target/bench-report.md`, so that a run cut short still leaves what it measured.
fn report(rows: &[Row], notes: &str, root: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per-operation times with the timer's own cost ({} ns, two clock reads) subtracted.\n",
        timer_overhead()
    );
    let _ = writeln!(
        out,
        "| operation | entries | engine | median us | p99 us | mean us | max us | tokcache / this (median) |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.op == r.op && b.entries == r.entries && b.engine == "tokcache");
        let ratio = base.map_or("-".to_string(), |b| {
            if r.engine == "tokcache" {
                "1".into()
            } else {
                format!("{:.3}", b.median / r.median)
            }
        });
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {} |",
            r.op, r.entries, r.engine, r.median, r.p99, r.mean, r.max, ratio
        );
    }
    let _ = writeln!(out, "\n{notes}");
    let _ = std::fs::write(root.parent().unwrap().join("bench-report.md"), &out);
    out
}
