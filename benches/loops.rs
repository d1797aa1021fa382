//! Profiling loops: `cargo bench --bench loops -- OP [ENTRIES]` runs one operation over and over
//! on a cache of ENTRIES (default 10000) 61-byte keys with integer values, so that
//! `perf record` can sample it, and prints its speed. The cache is built once in
//! `target/loops-ENTRIES` and reused. The side-by-side numbers are `benches/ops`; these loops are
//! for finding where the time goes (docs/performance.md quotes them).
//!
//! OP:
//! - `get`, `miss`: back-to-back lookups of existing / absent keys (RAM tier off), ns per get;
//!   `get-ram`: the existing keys with a RAM tier of 1000 entries (the default), which they
//!   keep missing: each disk hit also goes into it;
//! - `get-2t`, `ram-2t`, `get-ram-2t`, `many-2t`: `get`, `ram`, `get-ram` and `many` in two
//!   threads at once, ns per get in each;
//! - `many`, `many-miss`: the same keys through `get_many`, 64 at a time, ns per key;
//! - `latency`, `miss-latency`: the gets of `get` and `miss` timed one by one (key formatted just
//!   before each), median and p99;
//! - `ram`: 1000 hot keys from the RAM tier, ns per get;
//! - `set`: 300,000 sets of new keys on a copy of the cache, each timed, median / p99 / mean
//!   (the mean carries the compactions);
//! - `set-evict`: 2 KB sets into a cache bounded to 256 MiB (evicting) beside an unbounded one,
//!   rate and p99, then gets of their newest keys; ratios bounded / unbounded;
//! - `open`: open + drop, ms each, with the tail size;
//! - `compact`: five compactions, ms each; `set-compact`: sets at 50,000 a second while
//!   another process runs five compactions, with the slow sets and when they happened;
//! - `big`: gets of 2000 keys of 8.2 KB, each timed; `big-hot` gets each key twice and times the
//!   second (everything in cache: the CPU part).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokcache::Cache;

#[path = "../tests/common/noise.rs"]
mod noise;
use noise::noise;

const PREFIX: &str = "token_count";

fn key(i: u64) -> String {
    format!("tokenizer:cl100k_base:{i:039}")
}

fn big_key(i: u64) -> String {
    format!(
        "tokenizer:cl100k_base:{i:08}:{}",
        "lorem ipsum dolor sit amet ".repeat(303)
    )
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open(dir: &Path, ram: usize) -> Cache {
    Cache::builder(dir).max_ram_entries(ram).open().unwrap()
}

/// The cache of `n` entries, built on first use.
fn cache_dir(name: String, n: u64, key: fn(u64) -> String) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    if !dir.join("tokcache.ctl").exists() {
        let c = open(&dir, 0);
        for i in 0..n {
            c.set(PREFIX, &key(i), &i).unwrap();
        }
    }
    dir
}

/// Runs `round` (which does `per_round` operations) for about `secs` seconds; ns per operation.
fn throughput(secs: u64, per_round: u64, mut round: impl FnMut()) -> f64 {
    // `LOOPS_ROUNDS=N`: exactly N rounds, whatever the time (for instruction counts).
    let rounds: Option<u64> = std::env::var("LOOPS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok());
    let start = Instant::now();
    let mut ops = 0;
    while match rounds {
        Some(n) => ops < n * per_round,
        None => start.elapsed() < Duration::from_secs(secs),
    } {
        round();
        ops += per_round;
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// Median, p99 and mean of per-operation nanoseconds.
fn summary(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
    let mean = ns.iter().sum::<u64>() / ns.len() as u64;
    format!(
        "median {} ns, p99 {} ns, mean {mean} ns ({} ops)",
        at(0.5),
        at(0.99),
        ns.len()
    )
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(op) = args.first() else {
        eprintln!(
            "usage: cargo bench --bench loops -- get|get-ram|get-2t|ram-2t|get-ram-2t|many-2t|miss|many|many-miss|latency|ram|set|open|compact|set-compact|big|big-hot [ENTRIES]"
        );
        return;
    };
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = cache_dir(format!("loops-{n}"), n, key);
    let mut rng = Rng(0x5eed);
    match op.as_str() {
        "get" | "miss" | "get-ram" => {
            // `get-ram`: with the default RAM tier (1000 entries), which random keys miss:
            // each disk hit is also put into it, evicting another.
            let c = open(&dir, if op == "get-ram" { 1000 } else { 0 });
            let base = if op == "miss" { n + 1 } else { 0 };
            let keys: Vec<String> = (0..100_000).map(|_| key(base + rng.below(n))).collect();
            let want_hit = op != "miss";
            let ns = throughput(5, keys.len() as u64, || {
                for k in &keys {
                    assert_eq!(c.get::<u64>(PREFIX, k).is_some(), want_hit);
                }
            });
            println!("{op} at {n} entries: {ns:.1} ns per get");
        }
        "get-2t" | "ram-2t" | "get-ram-2t" | "many-2t" => {
            // Two threads of one process share the cache: RAM tier off; 1000 hot keys in a
            // large RAM tier; the default RAM tier (1000 entries), which the keys keep missing.
            let ram = op == "ram-2t";
            let capacity = match op.as_str() {
                "get-2t" | "many-2t" => 0,
                "ram-2t" => 100_000,
                _ => 1000,
            };
            let c = open(&dir, capacity);
            let span = if ram { 1000 } else { n };
            let keys: Vec<String> = (0..100_000).map(|_| key(rng.below(span))).collect();
            let ns = std::thread::scope(|s| {
                let runs: Vec<_> = (0..2)
                    .map(|t| {
                        let (c, keys) = (&c, &keys);
                        s.spawn(move || {
                            throughput(5, keys.len() as u64, || {
                                if op == "many-2t" {
                                    for batch in keys[t..].chunks(64) {
                                        let got = c.get_many::<u64>(PREFIX, batch);
                                        assert!(got.iter().all(Option::is_some));
                                    }
                                    return;
                                }
                                for k in keys.iter().skip(t) {
                                    assert!(c.get::<u64>(PREFIX, k).is_some());
                                }
                            })
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).sum::<f64>() / 2.0
            });
            println!("{op} at {n} entries: {ns:.1} ns per get in each of 2 threads");
        }
        "many" | "many-miss" => {
            let c = open(&dir, 0);
            let base = if op == "many" { 0 } else { n + 1 };
            let keys: Vec<String> = (0..100_000).map(|_| key(base + rng.below(n))).collect();
            let want_hit = op == "many";
            let ns = throughput(5, keys.len() as u64, || {
                for batch in keys.chunks(64) {
                    let got = c.get_many::<u64>(PREFIX, batch);
                    assert!(got.iter().all(|v| v.is_some() == want_hit));
                }
            });
            println!("{op} at {n} entries: {ns:.1} ns per key (get_many of 64 keys)");
        }
        "latency" | "miss-latency" => {
            let c = open(&dir, 0);
            let absent = op == "miss-latency";
            let ns = (0..200_000)
                .map(|_| {
                    let i = rng.below(n);
                    let k = key(if absent { n + 1 + i } else { i });
                    let t = Instant::now();
                    let got = std::hint::black_box(c.get::<u64>(PREFIX, &k));
                    let ns = t.elapsed().as_nanos() as u64;
                    assert_eq!(got, (!absent).then_some(i));
                    ns
                })
                .collect();
            let what = if absent { "miss" } else { "get" };
            println!("{what} at {n} entries, one by one: {}", summary(ns));
        }
        "ram" => {
            let c = open(&dir, 100_000);
            let hot: Vec<String> = (0..1000).map(|_| key(rng.below(n))).collect();
            let ns = throughput(3, hot.len() as u64, || {
                for k in &hot {
                    assert!(c.get::<u64>(PREFIX, k).is_some());
                }
            });
            println!("RAM-tier hit at {n} entries: {ns:.1} ns per get");
        }
        "set" => {
            // On a copy, so that the other loops keep a cache of `n` entries.
            let copy = dir.with_file_name(format!("loops-{n}-set"));
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
            }
            let c = open(&copy, 0);
            let run = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());
            let fresh: Vec<String> = (0..300_000u64)
                .map(|j| format!("tokenizer:cl100k_base:set-{run:x}-{j}"))
                .collect();
            let ns = fresh
                .iter()
                .zip(0u64..)
                .map(|(k, j)| {
                    let t = Instant::now();
                    c.set(PREFIX, k, &j).unwrap();
                    t.elapsed().as_nanos() as u64
                })
                .collect();
            println!("set on a cache of {n} entries: {}", summary(ns));
            drop(c);
            let _ = std::fs::remove_dir_all(&copy);
        }
        "set-evict" => {
            // Eviction is no stall: 2 KB sets of new keys into a new cache bounded to 256 MiB
            // (evicting from about the 120,000th set on) and into an unbounded one,
            // alternately, two rounds of 300,000 each; then 200,000 gets of the last 5,000 keys
            // of each (RAM tier off: disk hits). Rates, p99, and the ratios bounded / unbounded.
            let base = dir.with_file_name("loops-set-evict");
            let mut rows: Vec<(bool, f64, u64, f64)> = Vec::new();
            for round in 0..2 {
                for bounded in [true, false] {
                    let d = base.join(format!("{round}-{bounded}"));
                    let _ = std::fs::remove_dir_all(&d);
                    let c = Cache::builder(&d)
                        .max_ram_entries(0)
                        .max_disk_bytes(if bounded { 256 << 20 } else { 0 })
                        .open()
                        .unwrap();
                    // Letters at random: keys that compression barely shrinks, so that the
                    // bound fills as 2 KB of text per set would.
                    let keys: Vec<String> = (0..300_000u64)
                        .map(|j| format!("{j} {}", noise(j, 2040)))
                        .collect();
                    let start = Instant::now();
                    let mut ns: Vec<u64> = keys
                        .iter()
                        .zip(0u64..)
                        .map(|(k, j)| {
                            let t = Instant::now();
                            c.set(PREFIX, k, &j).unwrap();
                            t.elapsed().as_nanos() as u64
                        })
                        .collect();
                    let rate = keys.len() as f64 / start.elapsed().as_secs_f64();
                    ns.sort_unstable();
                    let p99 = ns[ns.len() * 99 / 100];
                    let hot = &keys[keys.len() - 5000..];
                    let get_ns = throughput(2, hot.len() as u64, || {
                        for k in hot {
                            std::hint::black_box(c.get::<u64>(PREFIX, k));
                        }
                    });
                    let s = c.get_stats();
                    println!(
                        "round {round} {}: {rate:.0} sets/s, p99 {:.1} us, get {get_ns:.0} ns, {} evicted, {:.1} MB on disk",
                        if bounded { "bounded" } else { "unbounded" },
                        p99 as f64 / 1e3,
                        s.disk_evictions,
                        s.disk_bytes as f64 / 1e6
                    );
                    rows.push((bounded, rate, p99, get_ns));
                    drop(c);
                    let _ = std::fs::remove_dir_all(&d);
                }
            }
            let mean = |bounded: bool, f: fn(&(bool, f64, u64, f64)) -> f64| {
                let v: Vec<f64> = rows.iter().filter(|r| r.0 == bounded).map(f).collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            println!(
                "bounded / unbounded: set rate {:.2}x, set p99 {:.2}x, get time {:.2}x",
                mean(true, |r| r.1) / mean(false, |r| r.1),
                mean(true, |r| r.2 as f64) / mean(false, |r| r.2 as f64),
                mean(true, |r| r.3) / mean(false, |r| r.3),
            );
        }
        "open" => {
            let tail = open(&dir, 0).get_stats().tail_records;
            let ns = throughput(4, 1, || drop(open(&dir, 0)));
            println!(
                "open at {n} entries ({tail} tail records): {:.3} ms",
                ns / 1e6
            );
        }
        "set-compact" => {
            // Another process compacts five times; this one overwrites entries at a steady
            // 50,000 sets a second meanwhile, as the ops bench's row does, and lists the sets
            // slower than 1 ms with when they started, against the compactions' start and end.
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["compact-child", &n.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let c = open(&dir, 1000);
            let epoch = std::time::SystemTime::now();
            let mut ns = Vec::new();
            let mut slow = Vec::new();
            let mut i = 0;
            let mut child = child;
            while child.try_wait().unwrap().is_none() {
                let t = Instant::now();
                c.set(PREFIX, &key(rng.below(n)), &i).unwrap();
                let took = t.elapsed();
                if took > Duration::from_millis(1) {
                    slow.push((epoch.elapsed().unwrap() - took, took));
                }
                ns.push(took.as_nanos() as u64);
                i += 1;
                while t.elapsed() < Duration::from_micros(20) {
                    std::hint::spin_loop();
                }
            }
            let out = child.wait_with_output().unwrap();
            let at = |d: Duration| format!("{:.3} s", d.as_secs_f64());
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (a, b) = line.split_once(' ').unwrap();
                let since = |t: &str| {
                    let t = std::time::UNIX_EPOCH + Duration::from_nanos(t.parse().unwrap());
                    at(t.duration_since(epoch).unwrap_or_default())
                };
                println!("compaction {} .. {}", since(a), since(b));
            }
            for (start, took) in slow {
                println!(
                    "slow set at {}: {:.1} ms",
                    at(start),
                    took.as_secs_f64() * 1e3
                );
            }
            println!(
                "set while another process compacts, {n} entries: {}",
                summary(ns)
            );
        }
        "compact-child" => {
            let c = open(&dir, 0);
            let now = || {
                let t = std::time::SystemTime::now();
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            };
            for _ in 0..5 {
                let start = now();
                c.compact().unwrap();
                println!("{start} {}", now());
            }
        }
        "compact" => {
            let c = open(&dir, 0);
            for _ in 0..5 {
                let t = Instant::now();
                c.compact().unwrap();
                println!(
                    "compact at {n} entries: {:.1} ms",
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        "big" | "big-hot" => {
            let dir = cache_dir("loops-8k".into(), 2000, big_key);
            let c = open(&dir, 0);
            let keys: Vec<String> = (0..2000).map(big_key).collect();
            let ns = (0..100_000)
                .map(|_| {
                    let i = rng.below(2000);
                    let k = keys[i as usize].clone();
                    if op == "big-hot" {
                        c.get::<u64>(PREFIX, &k);
                    }
                    let t = Instant::now();
                    let got = std::hint::black_box(c.get::<u64>(PREFIX, &k));
                    let ns = t.elapsed().as_nanos() as u64;
                    assert_eq!(got, Some(i));
                    ns
                })
                .collect();
            println!("{op}: get with an 8.2 KB key: {}", summary(ns));
        }
        other => eprintln!("unknown op {other}"),
    }
}
