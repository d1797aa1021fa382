//! Message-sized keys: `cargo bench --bench keys [--features compare]`. The real workload's keys
//! are whole chat messages (`tokenizer:cl100k_base:{text}`, KBs to hundreds of KB). For keys of
//! 1 KB, 8 KB, 100 KB and 300 KB, side by side in one run: tokcache (set; hit through a fresh
//! handle; hit of a hot key, from the RAM tier where it keeps one), the original's design (one
//! JSON file per entry, RAM dict in front), redb with `--features compare` (LMDB cannot hold
//! keys over 511 bytes), and the floor: hashing the key (xxh3) plus one full comparison with a
//! copy elsewhere in memory, over the same keys in the same order. Also the private memory
//! (`RssAnon`) a reader holds once its RAM tier is full (1000 entries, the default).
//!
//! Times are medians of per-operation timings (p99 in brackets); the machine is shared and
//! noisy, so read the ratios within one run. `TOKCACHE_BENCH_SCALE=0.2` runs fewer keys.

#[path = "ops/engines.rs"]
#[allow(dead_code, unused_imports)]
mod engines;

use std::path::Path;
use std::time::Instant;

#[path = "common/timing.rs"]
mod timing;

use engines::{Engine, Original, PREFIX};
use timing::{fmt, median_p99, shuffled, timed};
use tokcache::Cache;

/// The text of a bench key (every one starts with the token-count key's head).
fn text_of(key: &str) -> &str {
    key.strip_prefix("tokenizer:cl100k_base:")
        .expect("a token-count key")
}

/// tokcache with its defaults, asked as users of a token counter do: the key built from the
/// encoding and the text for every lookup (`token_count_key`), or not at all
/// (`get_token_count`, which hashes and compares the key in parts).
struct TokBuilt(Cache);
struct TokParts(Cache);

impl Engine for TokBuilt {
    fn open(dir: &Path, _ram: bool) -> Self {
        TokBuilt(Cache::open(dir).unwrap())
    }
    fn set(&self, key: &str, value: u64) {
        let key = tokcache::token_count_key("cl100k_base", text_of(key));
        self.0.set(PREFIX, &key, &value).unwrap();
    }
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(
            PREFIX,
            &tokcache::token_count_key("cl100k_base", text_of(key)),
        )
    }
}

impl Engine for TokParts {
    fn open(dir: &Path, _ram: bool) -> Self {
        TokParts(Cache::open(dir).unwrap())
    }
    fn set(&self, key: &str, value: u64) {
        self.0
            .set_token_count("cl100k_base", text_of(key), value)
            .unwrap();
    }
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get_token_count("cl100k_base", text_of(key))
    }
}

/// tokcache with its defaults (a RAM tier of 1000 entries), given the whole key.
struct Tok(Cache);

impl Engine for Tok {
    fn open(dir: &Path, _ram: bool) -> Self {
        Tok(Cache::open(dir).unwrap())
    }
    fn set(&self, key: &str, value: u64) {
        self.0.set(PREFIX, key, &value).unwrap();
    }
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(PREFIX, key)
    }
}

const SIZES: [(usize, usize); 4] = [
    (1 << 10, 5000),
    (8 << 10, 4000),
    (100 << 10, 1200),
    (300 << 10, 400),
];
/// Keys read again and again for the hot rows.
const HOT: usize = 1000;

/// A message of about `size` bytes, different for every `i` all along (as real messages are:
/// a comparison of a hit reads the whole key).
fn message(i: usize, size: usize) -> String {
    const WORDS: [&str; 16] = [
        "the", "model", "token", "cache", "prompt", "reply", "user", "system", "context", "window",
        "count", "chat", "message", "again", "turn", "proxy",
    ];
    let mut s = format!("tokenizer:cl100k_base:message {i}:");
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    while s.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(WORDS[(x % 16) as usize]);
        s.push(' ');
    }
    s
}

/// Private memory of this process (RssAnon), in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Row {
    engine: &'static str,
    set: (f64, f64),
    /// MB/s of all the sets, wall time (compactions included).
    set_rate: f64,
    fresh: (f64, f64),
    hot: (f64, f64),
}

/// Sets every key through a new handle, reads each once through another new one (in a
/// shuffled order), then reads `HOT` keys five times and times the last round.
fn run<E: Engine>(engine: &'static str, dir: &Path, keys: &[String], ram: bool) -> Row {
    let writer = E::open(dir, ram);
    let order = shuffled(keys.len(), 7);
    let start = Instant::now();
    let set = median_p99(timed(&order, |i| writer.set(&keys[i], i as u64)));
    let bytes: usize = keys.iter().map(String::len).sum();
    let set_rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    drop(writer);
    let reader = E::open(dir, ram);
    let order = shuffled(keys.len(), 11);
    let fresh = median_p99(timed(&order, |i| {
        assert_eq!(reader.get(&keys[i]), Some(i as u64));
    }));
    let hot: Vec<usize> = shuffled(keys.len(), 13).into_iter().take(HOT).collect();
    for _ in 0..4 {
        for &i in &hot {
            assert_eq!(reader.get(&keys[i]), Some(i as u64));
        }
    }
    let hot = median_p99(timed(&hot, |i| {
        assert_eq!(reader.get(&keys[i]), Some(i as u64));
    }));
    Row {
        engine,
        set,
        set_rate,
        fresh,
        hot,
    }
}

/// The floor of a hit: hashing the asked key and comparing it with a stored copy (allocated
/// apart from it), over the keys in the fresh-handle order.
fn floor(keys: &[String]) -> (f64, f64) {
    let copies: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    let order = shuffled(keys.len(), 11);
    median_p99(timed(&order, |i| {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(keys[i].as_bytes(), 5);
        std::hint::black_box(h);
        assert!(std::hint::black_box(&copies[i][..]) == keys[i].as_bytes());
    }))
}

/// Private memory a reader holds for the cache once it has read `HOT` distinct keys (its
/// RAM tier, of the default 1000 entries, full): measured in a new process (this program run
/// again with `TOKCACHE_KEYS_READER` set), from just before it opens the cache to after the
/// reads, so that no memory this process freed earlier hides it.
fn reader_memory(dir: &Path, size: usize) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TOKCACHE_KEYS_READER", format!("{}|{size}", dir.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("reader: {}", String::from_utf8_lossy(&out.stderr)))
}

/// The reader process of [`reader_memory`]: prints the bytes of RssAnon it gained.
fn reader(spec: &str) {
    let (dir, size) = spec.split_once('|').unwrap();
    let size: usize = size.parse().unwrap();
    let keys: Vec<String> = (0..HOT).map(|i| message(i, size)).collect();
    let before = rss_anon();
    let cache = Cache::open(dir).unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cache.get::<u64>(PREFIX, k), Some(i as u64));
    }
    println!("{}", rss_anon().saturating_sub(before));
}

fn main() {
    if let Ok(spec) = std::env::var("TOKCACHE_KEYS_READER") {
        return reader(&spec);
    }
    let scale: f64 = std::env::var("TOKCACHE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let root = tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("target")).unwrap();
    println!(
        "| key size | keys | engine | set | sets, MB/s | hit, fresh handle | hot hit | vs floor (fresh / hot) | reader memory |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut dd_lines = Vec::new();
    for (size, n) in SIZES {
        let n = ((n as f64 * scale) as usize).max(HOT + 1);
        let keys: Vec<String> = (0..n).map(|i| message(i, size)).collect();
        let floor = floor(&keys);
        let label = if size >= 1 << 20 {
            format!("{} MB", size >> 20)
        } else {
            format!("{} KB", size >> 10)
        };
        let tok_dir = root.path().join(format!("tok-{size}"));
        // The disk's speed changes from minute to minute here: measured right before and
        // right after tokcache's sets, each compared with both.
        let dd_before = dd_rate(root.path());
        let mut rows = vec![run::<Tok>("tokcache", &tok_dir, &keys, true)];
        let dd_after = dd_rate(root.path());
        dd_lines.push(format!(
            "- {label}: tokcache's sets {:.0} MB/s = {} the directory's `dd` ({} MB/s before, {} after)",
            rows[0].set_rate,
            match (dd_before, dd_after) {
                (Some(b), Some(a)) => format!(
                    "{:.2}x-{:.2}x",
                    rows[0].set_rate / b.max(a),
                    rows[0].set_rate / b.min(a)
                ),
                _ => "? x".into(),
            },
            dd_before.map_or("?".into(), |r| format!("{r:.0}")),
            dd_after.map_or("?".into(), |r| format!("{r:.0}")),
        ));
        let memory = reader_memory(&tok_dir, size);
        rows.push(run::<TokBuilt>(
            "tokcache, key built per call",
            &root.path().join(format!("built-{size}")),
            &keys,
            true,
        ));
        rows.push(run::<TokParts>(
            "tokcache, get_token_count",
            &root.path().join(format!("parts-{size}")),
            &keys,
            true,
        ));
        rows.push(run::<Original>(
            "original's design",
            &root.path().join(format!("orig-{size}")),
            &keys,
            true,
        ));
        #[cfg(feature = "compare")]
        rows.push(run::<engines::Redb>(
            "redb",
            &root.path().join(format!("redb-{size}")),
            &keys,
            false,
        ));
        for r in &rows {
            let mem = if r.engine == "tokcache" {
                format!("{:.1} MB", memory as f64 / 1e6)
            } else {
                "-".into()
            };
            println!(
                "| {label} | {n} | {} | {} | {:.0} | {} | {} | {:.2}x / {:.2}x | {mem} |",
                r.engine,
                fmt(r.set),
                r.set_rate,
                fmt(r.fresh),
                fmt(r.hot),
                r.fresh.0 / floor.0,
                r.hot.0 / floor.0,
            );
        }
        println!(
            "| {label} | {n} | floor: xxh3 + compare | - | - | {} | - | 1x | - |",
            fmt(floor)
        );
        println!("| {label} | {n} | LMDB | keys over 511 bytes are refused | | | | | |");
    }
    println!(
        "\nsets against the same directory's sequential write bandwidth (`dd` of 256 MiB, conv=fdatasync):"
    );
    for line in dd_lines {
        println!("{line}");
    }
}

/// MB/s of `dd` writing 256 MiB with `conv=fdatasync` into `dir`, timed here (dd's own
/// figure rounds, and changes unit with speed); `None` if it could not run.
fn dd_rate(dir: &Path) -> Option<f64> {
    const MIB: usize = 256;
    let file = dir.join("dd.bin");
    let start = Instant::now();
    let status = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "conv=fdatasync", "status=none"])
        .arg(format!("count={MIB}"))
        .arg(format!("of={}", file.display()))
        .status();
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(file);
    status
        .ok()
        .filter(std::process::ExitStatus::success)
        .map(|_| (MIB << 20) as f64 / elapsed / 1e6)
}
