//! The shared tier against real Redis servers: two "machines" (separate processes with their own
//! cache directories) sharing entries through one server and through a 3-master Redis Cluster,
//! and the faults a shared tier meets (a server killed, restarted, stopped; foreign bytes under
//! our key; a full queue): no operation fails or waits past its bound, no value is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::redis::{Cluster, Server};
use common::{child_spec, expect_success, spawn_child_with, value_of};
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
    let spec = child_spec("TOKCACHE_MACHINE");
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
    run_machine_with(role, dir, redis, &[])
}

/// Runs a machine process with these variables set too; its stats.
fn run_machine_with(
    role: &str,
    dir: &std::path::Path,
    redis: &str,
    vars: &[(&str, &str)],
) -> serde_json::Value {
    let spec = format!("{role}|{}|{redis}", dir.display());
    let mut all = vec![("TOKCACHE_MACHINE", spec.as_str())];
    all.extend_from_slice(vars);
    let out = expect_success(spawn_child_with("machine", &all));
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
fn redis_get(server: &Server, key: &str) -> String {
    let out = server.cli(&["GET", key]);
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

#[test]
fn two_machines_share_entries_through_one_server() {
    let mut server = Server::start();
    let url = server.url();
    let a = tempfile::tempdir().unwrap();
    run_machine("write", a.path(), &url);
    same_bytes_as_export(a.path(), |k| redis_get(&server, k));
    two_machines(&url, || server.kill());
}

#[test]
fn two_machines_share_entries_through_a_cluster() {
    let mut cluster = Cluster::start();
    let spec = cluster.spec();
    two_machines(&spec, || {
        // Spread over the three masters, and removed from all of them by namespace only.
        for n in &cluster.nodes {
            assert_ne!(n.cli(&["DBSIZE"]).trim(), "0", "node {}", n.port);
        }
        assert_eq!(cluster.dbsize(), KEYS as u64);
        cluster.nodes[0].cli(&["-c", "SET", "other-program:key", "kept"]);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(open(dir.path(), &spec).clear_shared().unwrap(), KEYS as u64);
        assert_eq!(cluster.dbsize(), 1);
        for n in &mut cluster.nodes {
            n.kill();
        }
    });
}

/// What an operation may take while the shared tier fails: its timeout (a connection and a
/// request, each bounded by it) and room for a loaded machine.
fn bound(timeout: Duration) -> Duration {
    timeout * 3 + Duration::from_millis(500)
}

fn open_with(dir: &std::path::Path, url: &str, timeout: Duration) -> Cache {
    Cache::builder(dir)
        .redis(url)
        .redis_timeout(timeout)
        .open()
        .unwrap()
}

/// Runs `op`, checks that it returned within `limit`; its result.
fn timed<T>(worst: &mut Duration, op: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = op();
    *worst = (*worst).max(t.elapsed());
    r
}

/// Sets `key` and flushes until the shared tier takes writes again (after its back-off).
fn until_written(cache: &Cache, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = shared(cache).written;
    while shared(cache).written == before {
        assert!(
            Instant::now() < deadline,
            "the shared tier did not come back"
        );
        std::thread::sleep(Duration::from_millis(50));
        cache.set("test", key, &value_of(key)).unwrap();
        cache.flush().unwrap();
    }
}

/// Local work around a failing shared tier: every value right, every operation bounded.
fn work_while_down(cache: &Cache, round: usize, worst: &mut Duration) {
    for i in 0..100 {
        let k = format!("down-{round}-{i}");
        timed(worst, || cache.set("test", &k, &value_of(&k)).unwrap());
        let missing = format!("missing-{round}-{i}");
        assert_eq!(timed(worst, || cache.get::<u64>("test", &missing)), None);
        assert_eq!(
            timed(worst, || cache.get::<u64>("test", &k)),
            Some(value_of(&k))
        );
        if i % 10 == 0 {
            assert!(timed(worst, || cache.remove("test", &k).unwrap()));
        }
    }
    timed(worst, || cache.flush().unwrap());
}

#[test]
fn a_stopped_server_holds_no_operation_past_its_timeout() {
    let server = Server::start();
    let t = Duration::from_millis(100);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = open_with(a.path(), &server.url(), t);
    cache.set("test", "before", &1u64).unwrap();
    cache.flush().unwrap();
    assert_eq!(shared(&cache).written, 1);

    server.stop();
    let mut worst = Duration::ZERO;
    work_while_down(&cache, 0, &mut worst);
    let s = shared(&cache);
    assert!(worst < bound(t), "an operation took {worst:?}");
    assert!(s.timeouts >= 1, "{s:?}");
    assert!(s.skipped >= 1, "lookups held off while backing off: {s:?}");
    assert!(s.dropped >= 1, "{s:?}");
    let pool = cache.pool_stats().unwrap().totals;
    assert_eq!(
        (pool.shared_errors, pool.shared_drops),
        (s.errors + s.timeouts, s.dropped),
        "the pool counts the tier's failures and drops: {pool:?}"
    );

    server.resume();
    until_written(&cache, "after");
    let other = open_with(b.path(), &server.url(), TIMEOUT);
    assert_eq!(other.get::<u64>("test", "after"), Some(value_of("after")));
    assert_eq!(other.get::<u64>("test", "before"), Some(1));
    assert_eq!(shared(&other).hits, 2);
}

#[test]
fn a_killed_server_is_reconnected_when_it_is_back() {
    let mut server = Server::start();
    let t = Duration::from_millis(100);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = open_with(a.path(), &server.url(), t);
    cache.set("test", "before", &1u64).unwrap();
    cache.flush().unwrap();

    server.kill();
    let mut worst = Duration::ZERO;
    work_while_down(&cache, 0, &mut worst);
    assert!(worst < bound(t), "an operation took {worst:?}");
    let s = shared(&cache);
    assert!(s.errors >= 1, "{s:?}");

    server.restart(); // empty: what it held is gone
    until_written(&cache, "after");
    let other = open_with(b.path(), &server.url(), TIMEOUT);
    assert_eq!(other.get::<u64>("test", "after"), Some(value_of("after")));
    assert_eq!(other.get::<u64>("test", "before"), None);
    assert_eq!(other.get::<u64>("test", "down-0-5"), None);
    let s = shared(&other);
    assert_eq!((s.hits, s.misses), (1, 2), "{s:?}");
}

#[test]
fn a_redis_down_at_open_is_a_shared_tier_that_misses() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let t = Duration::from_millis(100);
    let cache = open_with(dir.path(), &format!("redis://127.0.0.1:{port}/"), t);
    let mut worst = Duration::ZERO;
    work_while_down(&cache, 0, &mut worst);
    assert!(worst < bound(t), "an operation took {worst:?}");
    let s = cache.get_stats();
    assert_eq!(s.shared_hits, 0);
    assert!(s.shared.unwrap().errors >= 1);
    assert!(cache.clear_shared().is_err());
}

#[test]
fn foreign_bytes_under_our_key_are_misses() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_800_000_000.0));
    let cache = Cache::builder(dir.path())
        .redis(&server.url())
        .redis_timeout(TIMEOUT)
        .clock(clock.clone())
        .open()
        .unwrap();
    let name = format!("tokcache:{}", logical_name("test", "k"));
    let put = |bytes: &str| {
        server.cli(&["DEL", &name]);
        server.cli(&["SET", &name, bytes]);
    };
    let foreign = [
        "not json at all".to_string(),
        r#"{"key":"other","value":5,"timestamp":1800000000.0,"prefix":"test"}"#.into(),
        r#"{"key":"k","value":5,"timestamp":1800000000.0,"prefix":"token"}"#.into(),
        r#"{"key":"k","value":5}"#.into(),
        format!(
            "{}]",
            r#"{"key":"k","value":5,"timestamp":1800000000.0,"prefix":"test"}"#
        ),
    ];
    for (n, bytes) in foreign.iter().enumerate() {
        put(bytes);
        assert_eq!(cache.get::<u64>("test", "k"), None, "{bytes}");
        assert_eq!(shared(&cache).errors, n as u64 + 1, "{bytes}");
    }
    // Another type under our key: an error reply.
    server.cli(&["DEL", &name]);
    server.cli(&["HSET", &name, "f", "v"]);
    assert_eq!(cache.get::<u64>("test", "k"), None);
    assert_eq!(shared(&cache).errors, foreign.len() as u64 + 1);

    // Ours, but expired for this cache (24 h TTL): a miss.
    put(r#"{"key":"k","value":5,"timestamp":1799900000.0,"prefix":"test"}"#);
    assert_eq!(cache.get::<u64>("test", "k"), None);
    assert_eq!(shared(&cache).misses, 1);
    // Ours and live: a hit, kept locally with its own timestamp.
    put(r#"{"key":"k","value":5,"timestamp":1799999000.0,"prefix":"test"}"#);
    assert_eq!(cache.get::<u64>("test", "k"), Some(5));
    assert_eq!(shared(&cache).hits, 1);
    let v = cache.get_ref("test", "k").unwrap();
    assert_eq!(v.timestamp(), 1_799_999_000.0);
    assert_eq!(cache.get_stats().disk_files, 1);
}

/// `rediss://`: two machines share entries over TLS, the server's certificate checked against
/// the CA that `SSL_CERT_FILE` names; a process that does not trust that CA refuses the server
/// (misses and dropped writes, counted; no operation fails), unless its URL ends in
/// `#insecure`.
#[test]
fn tls_with_the_server_certificate_checked() {
    let server = Server::start_tls();
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = server.ca_file();
    let trusting = [("SSL_CERT_FILE", ca.as_str())];
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let wrote = run_machine_with("write", a.path(), &url, &trusting);
    assert_eq!(wrote["shared"]["written"], KEYS as u64, "{wrote}");
    let read = run_machine_with("read", b.path(), &url, &trusting);
    assert_eq!(read["shared_hits"], KEYS as u64, "{read}");
    let stored = server.cli(&[
        "GET",
        &format!("tokcache:{}", logical_name("test", &key(0))),
    ]);
    assert!(stored.starts_with("{\"key\":"), "{stored}");

    // This process trusts the system's roots only (unless its environment says otherwise).
    if std::env::var_os("SSL_CERT_FILE").is_none() && std::env::var_os("SSL_CERT_DIR").is_none() {
        let c = tempfile::tempdir().unwrap();
        let untrusting = open(c.path(), &url);
        assert_eq!(untrusting.get::<u64>("test", &key(0)), None);
        untrusting.set("test", "mine", &1u64).unwrap();
        untrusting.flush().unwrap();
        assert_eq!(
            untrusting.get::<u64>("test", "mine"),
            Some(1),
            "local tiers go on"
        );
        let s = shared(&untrusting);
        assert_eq!((s.hits, s.written), (0, 0), "{s:?}");
        assert!(s.errors >= 1 && s.dropped == 1, "{s:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let insecure = open(d.path(), &format!("{url}#insecure"));
    assert_eq!(
        insecure.get::<u64>("test", &key(0)),
        Some(value_of(&key(0)))
    );
}

#[test]
fn a_full_queue_drops_entries_and_never_blocks_a_set() {
    let server = Server::start();
    let t = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .redis(&server.url())
        .redis_timeout(t)
        .redis_queue(10)
        .open()
        .unwrap();
    server.stop(); // the writer's first pipeline waits out its timeout; the queue fills
    let mut worst = Duration::ZERO;
    for i in 0..1000 {
        let k = format!("k{i}");
        timed(&mut worst, || cache.set("test", &k, &i).unwrap());
    }
    timed(&mut worst, || cache.flush().unwrap());
    assert!(worst < bound(t), "an operation took {worst:?}");
    let s = shared(&cache);
    assert_eq!((s.written, s.dropped, s.queued), (0, 1000, 0), "{s:?}");
    // The pool's statistics count the drops too.
    let pool = cache.pool_stats().unwrap();
    assert_eq!(pool.totals.shared_drops, 1000, "{pool:?}");
    for i in 0..1000 {
        assert_eq!(cache.get::<u64>("test", &format!("k{i}")), Some(i));
    }
    server.resume();
}

#[test]
fn removals_and_expiry_reach_the_shared_tier() {
    let server = Server::start();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let t0 = 1_800_000_000.0;
    let clock = Arc::new(ManualClock::at(t0));
    let with_clock = |dir: &std::path::Path| {
        Cache::builder(dir)
            .redis(&server.url())
            .redis_timeout(TIMEOUT)
            .ttl(Duration::from_secs(3600))
            .clock(clock.clone())
            .open()
            .unwrap()
    };
    let (one, two) = (with_clock(a.path()), with_clock(b.path()));
    let text = "a chat message, looked up by parts";
    one.set_token_count("cl100k_base", text, 7).unwrap();
    one.set("test", "gone", &1u64).unwrap();
    one.flush().unwrap();
    // Expiry at timestamp + TTL, in Redis too.
    let name = format!(
        "tokcache:{}",
        logical_name(TOKEN_COUNT, &token_count_key("cl100k_base", text))
    );
    let pttl: u64 = server.cli(&["PTTL", &name]).trim().parse().unwrap();
    assert!((3_500_000..=3_600_000).contains(&pttl), "{pttl}");

    assert!(one.remove("test", "gone").unwrap());
    one.flush().unwrap();
    assert_eq!(two.get::<u64>("test", "gone"), None);
    clock.advance(3601.0);
    assert_eq!(two.get_token_count("cl100k_base", text), None, "expired");
    clock.set(t0 + 10.0);
    assert_eq!(two.get_token_count("cl100k_base", text), Some(7));
    let s = shared(&two);
    assert_eq!((s.hits, s.misses), (1, 2), "{s:?}");
}

#[test]
fn a_cluster_with_a_master_killed_holds_no_operation_past_its_timeout() {
    let mut cluster = Cluster::start();
    let t = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder(dir.path())
        .redis_cluster(cluster.nodes.iter().map(Server::url))
        .redis_timeout(t)
        .open()
        .unwrap();
    for i in 0..100 {
        cache.set("test", &format!("k{i}"), &i).unwrap();
    }
    cache.flush().unwrap();
    assert_eq!(shared(&cache).written, 100);
    cluster.nodes[1].kill();
    let mut worst = Duration::ZERO;
    work_while_down(&cache, 0, &mut worst);
    assert!(worst < bound(t), "an operation took {worst:?}");
    let s = shared(&cache);
    assert!(s.errors + s.timeouts >= 1, "{s:?}");
}
