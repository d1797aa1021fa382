//! The pool's statistics for people and scrapers: the text and JSON of `tokcache stats`, the
//! Prometheus text exposition format (`stats --prometheus`, `serve-metrics`), and `top`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokcache::{Cache, PoolCounts, PoolStats, Stats};

pub(crate) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The `"pool"` object of `stats --json`.
pub(crate) fn pool_json(pool: &PoolStats) -> serde_json::Value {
    let t = &pool.totals;
    serde_json::json!({
        "ram_hits": t.ram_hits,
        "disk_hits": t.disk_hits,
        "shared_hits": t.shared_hits,
        "misses": t.misses,
        "saves": t.sets,
        "removals": t.removals,
        "ram_evictions": t.ram_evictions,
        "disk_evictions": t.disk_evictions,
        "expired": t.expired,
        "expired_reclaimed": t.expired_reclaimed,
        "compactions": t.compactions,
        "compaction_seconds": t.compaction_seconds,
        "shared_errors": t.shared_errors,
        "shared_drops": t.shared_drops,
        "hit_rate_percent": (t.hit_rate() * 10_000.0).round() / 100.0,
        "processes": pool.processes.len(),
        "live": pool.processes,
    })
}

/// The pool's part of `stats` as text.
pub(crate) fn pool_text(pool: &PoolStats) -> String {
    let t = &pool.totals;
    let lookups = t.lookups();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pool:             {} lookups, hit rate {} (RAM {}, disk {}, shared {}), {} misses",
        lookups,
        percent(t.hits(), lookups),
        percent(t.ram_hits, lookups),
        percent(t.disk_hits, lookups),
        percent(t.shared_hits, lookups),
        t.misses
    );
    let _ = writeln!(
        s,
        "                  {} sets, {} removals, {} RAM evictions, {} disk evictions, {} expired dropped",
        t.sets, t.removals, t.ram_evictions, t.disk_evictions, t.expired
    );
    let _ = writeln!(
        s,
        "                  {} compactions ({:.2} s), {} live processes",
        t.compactions,
        t.compaction_seconds,
        pool.processes.len()
    );
    if !pool.processes.is_empty() {
        let _ = writeln!(
            s,
            "  {:>8} {:>12} {:>9} {:>10} {:>10}",
            "pid", "operations", "hit rate", "last seen", "started"
        );
        let now = now();
        for p in &pool.processes {
            let c = &p.counts;
            let _ = writeln!(
                s,
                "  {:>8} {:>12} {:>9} {:>10} {:>10}",
                p.pid,
                c.operations(),
                percent(c.hits(), c.lookups()),
                format!("{:.0}s ago", (now - p.last_seen).max(0.0)),
                format!("{:.0}s ago", (now - p.started).max(0.0)),
            );
        }
    }
    s
}

/// The live processes, busiest (most operations) first.
fn busiest(pool: &PoolStats) -> impl Iterator<Item = &tokcache::ProcessStats> {
    let mut all: Vec<_> = pool.processes.iter().collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.counts.operations()));
    all.into_iter()
}

/// One metric family: HELP, TYPE, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The Prometheus text exposition format (version 0.0.4) of the pool and the cache.
pub(crate) fn prometheus(pool: &PoolStats, s: &Stats, max_processes: usize) -> String {
    let t: &PoolCounts = &pool.totals;
    let mut out = String::new();
    let f = |n: u64| n as f64;
    family(
        &mut out,
        "tokcache_hits_total",
        "counter",
        "Lookups answered, by the tier that answered, summed over the pool's processes.",
        &[
            ("{tier=\"ram\"}", f(t.ram_hits)),
            ("{tier=\"disk\"}", f(t.disk_hits)),
            ("{tier=\"shared\"}", f(t.shared_hits)),
        ],
    );
    family(
        &mut out,
        "tokcache_misses_total",
        "counter",
        "Lookups that found nothing.",
        &[("", f(t.misses))],
    );
    family(
        &mut out,
        "tokcache_sets_total",
        "counter",
        "Entries written.",
        &[("", f(t.sets))],
    );
    family(
        &mut out,
        "tokcache_removals_total",
        "counter",
        "Entries removed.",
        &[("", f(t.removals))],
    );
    family(
        &mut out,
        "tokcache_evictions_total",
        "counter",
        "Entries evicted to make room, by tier.",
        &[
            ("{tier=\"ram\"}", f(t.ram_evictions)),
            ("{tier=\"disk\"}", f(t.disk_evictions)),
        ],
    );
    family(
        &mut out,
        "tokcache_expired_total",
        "counter",
        "Expired entries dropped.",
        &[("", f(t.expired))],
    );
    family(
        &mut out,
        "tokcache_expired_reclaimed_total",
        "counter",
        "Expired entries whose disk space compactions gave back.",
        &[("", f(t.expired_reclaimed))],
    );
    family(
        &mut out,
        "tokcache_compactions_total",
        "counter",
        "Compactions done.",
        &[("", f(t.compactions))],
    );
    family(
        &mut out,
        "tokcache_compaction_seconds_total",
        "counter",
        "Time spent compacting.",
        &[("", t.compaction_seconds)],
    );
    family(
        &mut out,
        "tokcache_shared_errors_total",
        "counter",
        "Failed operations of the shared tier (errors and timeouts).",
        &[("", f(t.shared_errors))],
    );
    family(
        &mut out,
        "tokcache_shared_dropped_total",
        "counter",
        "Entries the shared tier's writer dropped.",
        &[("", f(t.shared_drops))],
    );
    family(
        &mut out,
        "tokcache_disk_bytes",
        "gauge",
        "Bytes the cache's files take on disk (what the disk bound bounds).",
        &[("", f(s.disk_bytes))],
    );
    family(
        &mut out,
        "tokcache_max_disk_bytes",
        "gauge",
        "The directory's disk bound (0: none).",
        &[("", f(s.max_disk_bytes.unwrap_or(0)))],
    );
    family(
        &mut out,
        "tokcache_segment_bytes",
        "gauge",
        "Bytes of the segment files (live and dead records).",
        &[("", f(s.segment_bytes))],
    );
    family(
        &mut out,
        "tokcache_live_bytes",
        "gauge",
        "Bytes of live records.",
        &[("", f(s.live_bytes))],
    );
    family(
        &mut out,
        "tokcache_entries",
        "gauge",
        "Entries on disk.",
        &[("", f(s.disk_files))],
    );
    family(
        &mut out,
        "tokcache_processes",
        "gauge",
        "Live cache handles of the pool (usually one per process).",
        &[("", pool.processes.len() as f64)],
    );
    // The busiest processes, by operations: a label per process, bounded.
    let per: Vec<(String, f64)> = busiest(pool)
        .take(max_processes)
        .map(|p| {
            (
                format!("{{pid=\"{}\"}}", p.pid),
                p.counts.operations() as f64,
            )
        })
        .collect();
    let per: Vec<(&str, f64)> = per.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family(
        &mut out,
        "tokcache_process_operations_total",
        "counter",
        "Lookups, sets and removals of each live process (the busiest 20).",
        &per,
    );
    out
}

/// Serves the exposition at `/metrics` (and `/`) on `listen`, reading the cache at each scrape.
pub(crate) fn serve(cache: &Cache, listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    eprintln!(
        "serving metrics on http://{}/metrics",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = String::new();
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => continue,
        });
        if reader.read_line(&mut request).is_err() {
            continue;
        }
        // The rest of the header, up to the empty line.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = if request.starts_with("GET ") && (path == "/metrics" || path == "/") {
            match cache.pool_stats() {
                Ok(pool) => ("200 OK", prometheus(&pool, &cache.get_stats(), 20)),
                Err(e) => ("500 Internal Server Error", format!("{e}\n")),
            }
        } else {
            ("404 Not Found", "try /metrics\n".to_string())
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

/// `tokcache top`: redraws once a second until `q`.
pub(crate) fn top(cache: &Cache) -> Result<(), String> {
    let term = console::Term::stdout();
    let (tx, keys) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let input = console::Term::stdout();
        while let Ok(k) = input.read_key() {
            if tx.send(k).is_err() {
                break;
            }
        }
    });
    let _ = term.hide_cursor();
    let mut last: Option<(Instant, PoolCounts)> = None;
    let result = loop {
        let pool = match cache.pool_stats() {
            Ok(p) => p,
            Err(e) => break Err(e.to_string()),
        };
        let s = cache.get_stats();
        let now = Instant::now();
        let rate = |f: fn(&PoolCounts) -> u64| match &last {
            Some((t, prev)) => {
                let secs = now.duration_since(*t).as_secs_f64().max(1e-3);
                f(&pool.totals).saturating_sub(f(prev)) as f64 / secs
            }
            None => 0.0,
        };
        let screen = top_screen(
            cache,
            &pool,
            &s,
            [
                rate(PoolCounts::lookups),
                rate(|c| c.sets),
                rate(PoolCounts::hits),
            ],
        );
        let _ = term.clear_screen();
        let _ = term.write_str(&screen);
        last = Some((now, pool.totals.clone()));
        match keys.recv_timeout(Duration::from_secs(1)) {
            Ok(console::Key::Char('q' | 'Q') | console::Key::Escape) => break Ok(()),
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // No keyboard (not a terminal): redraw until killed.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    let _ = term.show_cursor();
    let _ = term.write_line("");
    result
}

fn top_screen(
    cache: &Cache,
    pool: &PoolStats,
    s: &Stats,
    [lookups_per_s, sets_per_s, hits_per_s]: [f64; 3],
) -> String {
    let t = &pool.totals;
    let lookups = t.lookups();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tokcache top: {}    (q quits)\r",
        cache.dir().display()
    );
    let _ = writeln!(out, "\r");
    let _ = writeln!(
        out,
        "hit rate  {:>7} overall   RAM {:>7}   disk {:>7}   shared {:>7}\r",
        percent(t.hits(), lookups),
        percent(t.ram_hits, lookups),
        percent(t.disk_hits, lookups),
        percent(t.shared_hits, lookups)
    );
    let _ = writeln!(
        out,
        "per second  {lookups_per_s:>9.0} lookups  {hits_per_s:>9.0} hits  {sets_per_s:>9.0} sets\r"
    );
    let _ = writeln!(
        out,
        "totals    {} lookups, {} hits, {} misses, {} sets, {} evictions (RAM), {} compactions\r",
        lookups,
        t.hits(),
        t.misses,
        t.sets,
        t.ram_evictions,
        t.compactions
    );
    let _ = writeln!(
        out,
        "disk      {}, {} entries, {} live\r",
        crate::bytes(s.disk_bytes),
        s.disk_files,
        crate::bytes(s.live_bytes)
    );
    let _ = writeln!(out, "\r");
    let _ = writeln!(
        out,
        "{:>8} {:>12} {:>9} {:>10}   ({} live processes)\r",
        "pid",
        "operations",
        "hit rate",
        "last seen",
        pool.processes.len()
    );
    let now = now();
    for p in busiest(pool).take(15) {
        let c = &p.counts;
        let _ = writeln!(
            out,
            "{:>8} {:>12} {:>9} {:>10}\r",
            p.pid,
            c.operations(),
            percent(c.hits(), c.lookups()),
            format!("{:.0}s ago", (now - p.last_seen).max(0.0))
        );
    }
    out
}
