//! The shared tier: `cargo bench --bench shared --features redis`. Starts its own
//! `redis-server` on a free loopback port (Debian package redis-server) and measures, side by
//! side in one run, on 61-byte token-count keys with integer values:
//!
//! - the local rows with the tier off and on, alternately, twice each: set (new keys), hit
//!   through a fresh handle (the mapping), hit of a hot key (RAM tier), and a miss (with the
//!   tier on, a miss asks Redis: one round trip);
//! - a shared-tier hit (another directory, the entry only in Redis: checked, stored locally,
//!   returned) beside a raw `GET` of the same Redis key through the same client crate, key by
//!   key alternately;
//! - the background writer's throughput: sets as fast as one thread makes them, then `flush`,
//!   with what was written and dropped.
//!
//! Times are medians of per-operation timings (p99 in brackets). The server shares the
//! machine's cores with the bench; read the ratios within one run. `TOKCACHE_BENCH_SCALE=0.2`
//! runs fewer keys.

#[path = "../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis_server;
#[path = "../tests/common/system.rs"]
mod system;

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "common/timing.rs"]
mod timing;

use redis_server::Server;
use timing::{fmt, median_p99, shuffled, timed};
use tokcache::{Cache, logical_name, token_count_key};

const PREFIX: &str = "token_count";
const HOT: usize = 1000;

fn scale() -> f64 {
    std::env::var("TOKCACHE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// The `i`th key of a run: 61 bytes, a token-count key as the real workload's (`tag` keeps
/// the runs' keys apart in the one Redis).
fn key(tag: &str, i: usize) -> String {
    token_count_key(
        "cl100k_base",
        &format!("{tag} message {i:>12} of the bench run"),
    )
}

fn open(dir: &Path, redis: Option<&str>) -> Cache {
    let builder = Cache::builder(dir);
    match redis {
        // The same timeout as a deployment would set: a round trip here is ~30-100 us.
        Some(url) => builder.redis(url).redis_timeout(Duration::from_millis(50)),
        None => builder,
    }
    .open()
    .unwrap()
}

struct Local {
    set: (f64, f64),
    fresh: (f64, f64),
    hot: (f64, f64),
    miss: (f64, f64),
}

/// Sets `n` new keys through one handle (and flushes it, untimed), reads each through a fresh
/// one, reads `HOT` of them five times and times the last round, then asks `n` absent keys.
fn local(root: &Path, tag: &str, n: usize, redis: Option<&str>) -> Local {
    let dir = root.join(tag);
    let keys: Vec<String> = (0..n).map(|i| key(tag, i)).collect();
    let writer = open(&dir, redis);
    let set = median_p99(timed(&shuffled(n, 7), |i| {
        writer.set(PREFIX, &keys[i], &(i as u64)).unwrap();
    }));
    writer.flush().unwrap();
    drop(writer);
    let reader = open(&dir, redis);
    let get = |i: usize| assert_eq!(reader.get::<u64>(PREFIX, &keys[i]), Some(i as u64));
    let fresh = median_p99(timed(&shuffled(n, 11), get));
    let hot: Vec<usize> = shuffled(n, 13).into_iter().take(HOT).collect();
    for _ in 0..4 {
        hot.iter().for_each(|&i| get(i));
    }
    let hot = median_p99(timed(&hot, get));
    let absent: Vec<String> = (0..n).map(|i| key(&format!("{tag}-absent"), i)).collect();
    let miss = median_p99(timed(&shuffled(n, 17), |i| {
        assert_eq!(reader.get::<u64>(PREFIX, &absent[i]), None);
    }));
    if redis.is_some() {
        let s = reader.get_stats().shared.unwrap();
        assert_eq!((s.errors, s.timeouts), (0, 0), "{s:?}");
    }
    Local {
        set,
        fresh,
        hot,
        miss,
    }
}

/// A shared-tier hit (a cache with its own, empty directory asks Redis) and a raw `GET` of
/// the same Redis key through a connection of the same client crate, key by key, which one
/// goes first alternating.
fn shared_hits(root: &Path, url: &str, n: usize) -> ((f64, f64), (f64, f64)) {
    let keys: Vec<String> = (0..n).map(|i| key("shared", i)).collect();
    let one = open(&root.join("shared-one"), Some(url));
    for (i, k) in keys.iter().enumerate() {
        one.set(PREFIX, k, &(i as u64)).unwrap();
    }
    one.flush().unwrap();
    let two = open(&root.join("shared-two"), Some(url));
    let mut raw = redis::Client::open(url).unwrap().get_connection().unwrap();
    let names: Vec<String> = keys
        .iter()
        .map(|k| format!("tokcache:{}", logical_name(PREFIX, k)))
        .collect();
    let (mut hit, mut get) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (round, i) in shuffled(n, 19).into_iter().enumerate() {
        let mut time_hit = || {
            let t = Instant::now();
            assert_eq!(two.get::<u64>(PREFIX, &keys[i]), Some(i as u64));
            hit.push(t.elapsed().as_nanos() as u64);
        };
        let mut time_get = || {
            let t = Instant::now();
            let bytes: Vec<u8> = redis::cmd("GET").arg(&names[i]).query(&mut raw).unwrap();
            get.push(t.elapsed().as_nanos() as u64);
            assert!(!bytes.is_empty());
        };
        if round % 2 == 0 {
            time_hit();
            time_get();
        } else {
            time_get();
            time_hit();
        }
    }
    let s = two.get_stats().shared.unwrap();
    assert_eq!((s.hits, s.errors, s.timeouts), (n as u64, 0, 0), "{s:?}");
    (median_p99(hit), median_p99(get))
}

/// Sets of new keys, timed one by one: as fast as one thread makes them (`rate` `None`), or
/// at `rate` a second (the thread sleeps every 64 sets until it is on schedule, as a pool's
/// setter waits for its tokenizer between sets). Then `flush`.
fn sets(cache: &Cache, tag: &str, n: usize, rate: Option<f64>) -> Sets {
    let keys: Vec<String> = (0..n).map(|i| key(tag, i)).collect();
    let start = Instant::now();
    let mut times = Vec::with_capacity(n);
    for (i, k) in keys.iter().enumerate() {
        if let Some(rate) = rate
            && i % 64 == 0
        {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let t = Instant::now();
        cache.set(PREFIX, k, &(i as u64)).unwrap();
        times.push(t.elapsed().as_nanos() as u64);
    }
    let sets = start.elapsed();
    let queued = cache.get_stats().shared.map_or(0, |s| s.queued);
    cache.flush().unwrap();
    Sets {
        n,
        each: median_p99(times),
        sets,
        queued,
        all: start.elapsed(),
    }
}

struct Sets {
    n: usize,
    each: (f64, f64),
    /// The sets' wall time, what the writer still held then, and the wall time after `flush`.
    sets: Duration,
    queued: u64,
    all: Duration,
}

/// What reached Redis, and how fast the writer drained its queue after the last set.
fn writer_line(cache: &Cache, s: &Sets) -> String {
    let st = cache.get_stats().shared.unwrap();
    let drain = s.all - s.sets;
    let drained = if s.queued >= 1000 {
        format!(
            "; the {} queued at the last set were drained at {:.0}k/s",
            s.queued,
            s.queued as f64 / drain.as_secs_f64() / 1e3
        )
    } else {
        String::new()
    };
    format!(
        "{} sets in {:.0} ms ({:.0}k/s), each {}; all in Redis {:.0} ms after the first: \
         written {}, dropped {}, errors {}, timeouts {}{drained}",
        s.n,
        s.sets.as_secs_f64() * 1e3,
        s.n as f64 / s.sets.as_secs_f64() / 1e3,
        fmt(s.each),
        s.all.as_secs_f64() * 1e3,
        st.written,
        st.dropped,
        st.errors,
        st.timeouts,
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list of tests
    }
    let n = ((20_000.0 * scale()) as usize).max(HOT);
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let server = Server::start();
    let url = server.url();
    let version = server.cli(&["INFO", "server"]);
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();

    println!("## The shared tier: {n} keys of 61 bytes, redis-server {version} on loopback\n");
    println!("| tier | set | hit, fresh handle | hit, RAM tier | miss |");
    println!("|---|---:|---:|---:|---:|");
    for round in 0..2 {
        for (name, redis) in [("off", None), ("on", Some(url.as_str()))] {
            let tag = format!("local-{name}-{round}");
            let r = local(root.path(), &tag, n, redis);
            println!(
                "| {name} | {} | {} | {} | {} |",
                fmt(r.set),
                fmt(r.fresh),
                fmt(r.hot),
                fmt(r.miss)
            );
        }
    }
    let (hit, get) = shared_hits(root.path(), &url, n);
    println!(
        "\n| shared-tier hit (Redis, checked, kept locally) | raw GET, same client | hit / GET |"
    );
    println!("|---:|---:|---:|");
    println!("| {} | {} | {:.2}x |", fmt(hit), fmt(get), hit.0 / get.0);

    let many = n * 10;
    println!("\n| sets of new keys, tier | as fast as possible | at 100k/s |");
    println!("|---|---:|---:|");
    let mut lines = Vec::new();
    for (name, redis) in [("off", None), ("on", Some(url.as_str()))] {
        let mut row = format!("| {name} |");
        for (rate, label) in [(None, "flat out"), (Some(100_000.0), "100k/s")] {
            let tag = format!("sets-{name}-{label}");
            let cache = open(&root.path().join(&tag), redis);
            let s = sets(&cache, &tag, many, rate);
            row.push_str(&format!(" {} |", fmt(s.each)));
            if redis.is_some() {
                lines.push(format!("- {label}: {}", writer_line(&cache, &s)));
            }
        }
        println!("{row}");
    }
    println!("\nThe writer (tier on):\n{}", lines.join("\n"));
}
