//! The pool's statistics through the CLI, as an operator reads them: processes with known
//! numbers of sets, hits and misses, then `stats --json`, `stats --prometheus` and
//! `serve-metrics` from another process; `top` in a terminal (tmux) while a workload runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../tests/common/system.rs"]
mod system;

fn tokcache(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokcache"));
    c.arg("--dir").arg(dir).env_remove("TOKCACHE_DIR");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    tokcache(dir).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Five `set`, three `get` that hit and two that miss: ten processes, each counted once.
fn workload(dir: &Path) {
    for i in 0..5 {
        ok(&run(dir, &["set", &format!("k{i}"), &i.to_string()]));
    }
    for i in 0..3 {
        assert_eq!(
            ok(&run(dir, &["get", &format!("k{i}")])).trim(),
            i.to_string()
        );
    }
    for i in 0..2 {
        assert_eq!(
            run(dir, &["get", &format!("absent{i}")]).status.code(),
            Some(1)
        );
    }
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[test]
fn stats_json_and_prometheus_show_the_pools_exact_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    workload(d);
    let v: serde_json::Value = serde_json::from_str(&ok(&run(d, &["stats", "--json"]))).unwrap();
    let pool = &v["pool"];
    assert_eq!(pool["saves"], 5, "{pool}");
    assert_eq!(
        pool["disk_hits"].as_u64().unwrap() + pool["ram_hits"].as_u64().unwrap(),
        3
    );
    assert_eq!(pool["shared_hits"], 0);
    assert_eq!(pool["misses"], 2);
    assert_eq!(pool["ram_evictions"], 0);
    assert_eq!(pool["disk_evictions"], 0);
    assert_eq!(
        pool["processes"], 0,
        "the monitor is not one of the pool's: {pool}"
    );
    // The handle's own fields keep their per-process meaning: `stats` itself looked nothing up.
    assert_eq!(v["saves"], 0);

    let text = ok(&run(d, &["stats", "--prometheus"]));
    assert_eq!(sample(&text, "tokcache_sets_total"), 5.0);
    assert_eq!(
        sample(&text, "tokcache_hits_total{tier=\"ram\"}")
            + sample(&text, "tokcache_hits_total{tier=\"disk\"}"),
        3.0
    );
    assert_eq!(sample(&text, "tokcache_hits_total{tier=\"shared\"}"), 0.0);
    assert_eq!(sample(&text, "tokcache_misses_total"), 2.0);
    assert_eq!(sample(&text, "tokcache_entries"), 5.0);
    assert_eq!(sample(&text, "tokcache_processes"), 0.0);
    assert!(sample(&text, "tokcache_disk_bytes") > 0.0);
    // Every family has its HELP and TYPE, before its samples.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name}");
    }

    let human = ok(&run(d, &["stats"]));
    assert!(
        human.contains("pool:             5 lookups, hit rate 60.0%"),
        "{human}"
    );
}

#[test]
fn serve_metrics_answers_a_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    workload(d);
    let mut server = tokcache(d)
        .args(["serve-metrics", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("serving metrics on http://")
        .and_then(|a| a.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let get = |path: &str| {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        conn.read_to_string(&mut resp).unwrap();
        resp
    };
    let resp = get("/metrics");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    assert_eq!(sample(&resp, "tokcache_sets_total"), 5.0);
    // A scrape reads the pool as it is now.
    ok(&run(d, &["set", "k9", "9"]));
    assert_eq!(sample(&get("/metrics"), "tokcache_sets_total"), 6.0);
    assert!(get("/nothing").starts_with("HTTP/1.1 404"));
    server.kill().unwrap();
    server.wait().unwrap();
}

fn tmux(args: &[&str]) -> Output {
    Command::new("tmux").args(args).output().unwrap()
}

#[test]
fn top_shows_a_running_workload_and_quits_on_q() {
    assert!(
        system::ensure("tmux", &["-V"], "tmux"),
        "this test reads `tokcache top` from a tmux pane: install the Debian package tmux \
         (the test does it itself as root)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("cache");
    ok(&run(&d, &["set", "seed", "1"]));
    let name = format!("tokcache-top-{}", std::process::id());
    let socket = tmp.path().join("tmux.sock");
    let socket = socket.to_str().unwrap();
    let cmd = format!(
        "{} --dir {} top",
        env!("CARGO_BIN_EXE_tokcache"),
        d.display()
    );
    let started = tmux(&[
        "-S", socket, "new", "-d", "-s", &name, "-x", "120", "-y", "30", &cmd,
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = || {
        String::from_utf8(tmux(&["-S", socket, "capture-pane", "-p", "-t", &name]).stdout).unwrap()
    };
    let wait_for = |what: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = screen();
            if what(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "top never showed it:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = wait_for(&|s| s.contains("tokcache top:"));
    assert!(first.contains("0 lookups"), "{first}");
    // A workload: the screen changes to its numbers (5 sets + the seed's, 3 hits, 2 misses).
    workload(&d);
    let s = wait_for(&|s| s.contains("totals    5 lookups, 3 hits, 2 misses, 6 sets"));
    assert!(s.contains("60.0% overall"), "{s}");
    assert!(s.contains("6 entries"), "{s}");
    tmux(&["-S", socket, "send-keys", "-t", &name, "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux(&["-S", socket, "has", "-t", &name]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tmux(&["-S", socket, "kill-server"]);
}
