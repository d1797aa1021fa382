//! The shared tier against real Redis servers: two "machines" (separate processes with their own
//! cache directories) sharing entries through one server and through a 3-master Redis Cluster,
//! and the faults a shared tier meets (a server killed, restarted, stopped; foreign bytes under
//! our key; a full queue): no operation fails or waits past its bound, no value is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::redis::{Cluster, Server, cli};
use common::{expect_success, spawn_child, value_of};
use tokcache::{Cache, ManualClock, SharedStats, TOKEN_COUNT, logical_name, token_count_key};

const KEYS: usize = 300;
/// Generous for correctness tests on a loaded machine; the fault tests use their own.
const TIMEOUT: Duration = Duration::from_secs(2);

fn open(dir: &std::path::Path, spec: &str) -> Cache {
    Cache::builder(dir)
        .redis(spec)
        .redis_timeout(TIMEOUT)
        .open()
        .unwrap()
}

fn key(i: usize) -> String {
    format!("message {i}: {}", "é".repeat(i % 7))
}

fn shared(cache: &Cache) -> SharedStats {
    cache.get_stats().shared.expect("a shared tier")
}

/// A machine's process: `write` sets KEYS entries (counts, strings, lists, token counts by
/// parts) and flushes; `read` checks that each is there with its value; prints its stats.
#[test]
#[ignore = "entry point of the machine processes of this file"]
fn machine() {
    let Ok(spec) = std::env::var("TOKCACHE_MACHINE") else {
        return;
    };
    let mut it = spec.splitn(3, '|');
    let (role, dir, redis) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let cache = open(dir.as_ref(), redis);
    for i in 0..KEYS {
        let k = key(i);
        match (role, i % 3) {
            ("write", 0) => cache.set("test", &k, &value_of(&k)).unwrap(),
            ("write", 1) => cache
                .set("test", &k, &vec![k.clone(), "ü𝄞".into()])
                .unwrap(),
            ("write", _) => cache
                .set_token_count("cl100k_base", &k, value_of(&k))
                .unwrap(),
            (_, 0) => assert_eq!(cache.get::<u64>("test", &k), Some(value_of(&k)), "{k}"),
            (_, 1) => assert_eq!(
                cache.get::<Vec<String>>("test", &k),
                Some(vec![k.clone(), "ü𝄞".into()]),
                "{k}"
            ),
            (_, _) => assert_eq!(
                cache.get_token_count("cl100k_base", &k),
                Some(value_of(&k)),
                "{k}"
            ),
        }
    }
    if role == "write" {
        cache.flush().unwrap();
    }
    println!("{}", serde_json::to_string(&cache.get_stats()).unwrap());
}

/// Runs a machine process; its stats.
fn run_machine(role: &str, dir: &std::path::Path, redis: &str) -> serde_json::Value {
    let spec = format!("{role}|{}|{redis}", dir.display());
    let out = expect_success(spawn_child("machine", "TOKCACHE_MACHINE", &spec));
    let line = out.lines().rfind(|l| l.starts_with('{')).unwrap();
    serde_json::from_str(line).unwrap()
}

/// What one machine sets and flushes, another reads from Redis (and keeps), then from its own
/// directory once Redis is gone.
fn two_machines(redis: &str, kill_redis: impl FnOnce()) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wrote = run_machine("write", a.path(), redis);
    assert_eq!(wrote["shared"]["written"], KEYS as u64, "{wrote}");
    assert_eq!(wrote["shared"]["dropped"], 0, "{wrote}");
    let read = run_machine("read", b.path(), redis);
    assert_eq!(read["shared_hits"], KEYS as u64, "{read}");
    assert_eq!(read["shared"]["hits"], KEYS as u64, "{read}");
    assert_eq!(read["misses"], 0, "{read}");
    assert_eq!(
        read["disk_files"], KEYS as u64,
        "kept in its own directory: {read}"
    );
    kill_redis();
    let again = run_machine("read", b.path(), redis);
    assert_eq!(again["disk_hits"], KEYS as u64, "{again}");
    assert_eq!(again["shared_hits"], 0, "{again}");
}

/// The entry in Redis is byte for byte what `tokcache export --format files` writes for it.
fn same_bytes_as_export(dir: &std::path::Path, get: impl Fn(&str) -> String) {
    let cache = Cache::open(dir).unwrap();
    let mut checked = 0;
    cache.for_each_entry(|e| {
        let redis_key = format!("tokcache:{}", e.logical_name());
        assert_eq!(
            get(&redis_key),
            e.to_original_json().unwrap(),
            "{redis_key}"
        );
        checked += 1;
    });
    assert_eq!(checked, KEYS);
}

/// The raw bytes `redis-cli GET` prints (without its newline).
fn redis_get(port: u16, key: &str) -> String {
    let out = cli(port, &["GET", key]);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

#[test]
fn two_machines_share_entries_through_one_server() {
    let mut server = Server::start();
    let url = server.url();
    let port = server.port;
    let a = tempfile::tempdir().unwrap();
    run_machine("write", a.path(), &url);
    same_bytes_as_export(a.path(), |k| redis_get(port, k));
    two_machines(&url, || server.kill());
}

#[test]
fn two_machines_share_entries_through_a_cluster() {
    let mut cluster = Cluster::start();
    let spec = cluster.spec();
    two_machines(&spec, || {
        // Spread over the three masters, and removed from all of them by namespace only.
        for n in &cluster.nodes {
            assert_ne!(cli(n.port, &["DBSIZE"]).trim(), "0", "node {}", n.port);
        }
        assert_eq!(cluster.dbsize(), KEYS as u64);
        cli(
            cluster.nodes[0].port,
            &["-c", "SET", "other-program:key", "kept"],
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(open(dir.path(), &spec).clear_shared().unwrap(), KEYS as u64);
        assert_eq!(cluster.dbsize(), 1);
        for n in &mut cluster.nodes {
            n.kill();
        }
    });
}
