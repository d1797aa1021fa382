//! `tokcache`: inspect, export, import, verify and compact a tokcache directory.

use std::fs;
use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod metrics;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokcache::{Cache, Storage};

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_FAILED: u8 = 2;

/// Inspect and maintain a tokcache directory.
///
/// Exit status: 0 on success, 1 when the asked entry is not there (get, rm), 2 for bad usage, a
/// failed operation, or (verify) a cache that is not sound.
#[derive(Parser, Debug)]
#[command(name = "tokcache", version)]
struct Cli {
    /// Cache directory.
    #[arg(long, global = true, env = "TOKCACHE_DIR", default_value = "temp")]
    dir: PathBuf,
    /// Age in hours after which entries count as expired.
    #[arg(long, global = true, default_value_t = 24.0)]
    ttl_hours: f64,
    /// Set the directory's disk bound, in bytes, for every process that uses it (0: none).
    /// Without it, the directory's bound stays (1 GiB on a new directory).
    #[arg(long, global = true, env = "TOKCACHE_MAX_DISK_BYTES")]
    max_disk_bytes: Option<u64>,
    /// A shared tier: a Redis URL (redis://host:port/db; rediss:// for TLS), or a Redis Cluster's nodes separated
    /// by commas. `get` asks it on a local miss; `set`, `rm` and `import` write there too.
    #[arg(long, global = true, env = "TOKCACHE_REDIS")]
    redis: Option<String>,
    /// The shared tier's key namespace (keys are {namespace}:{prefix}_{md5}).
    #[arg(long, global = true, default_value = "tokcache")]
    redis_namespace: String,
    /// How long to wait for the shared tier, in milliseconds.
    #[arg(long, global = true, default_value_t = 1000)]
    redis_timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the cache's statistics, and the pool's: every process's counts summed, a row per
    /// live process.
    Stats {
        /// One JSON object instead of text (the pool's totals in "pool").
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// The Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
    },
    /// Serve the Prometheus metrics of `stats --prometheus` over HTTP at /metrics.
    ServeMetrics {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
    },
    /// A live view of the pool: hit rates, operations per second, disk, the busiest processes
    /// (redrawn every second; q quits).
    Top,
    /// Print an entry's value as JSON (exit 1 on a miss).
    Get {
        #[arg(long, default_value = "token")]
        prefix: String,
        key: String,
    },
    /// Store a value given as JSON text.
    Set {
        #[arg(long, default_value = "token")]
        prefix: String,
        key: String,
        value_json: String,
    },
    /// Remove an entry (exit 1 if it was not there).
    Rm {
        #[arg(long, default_value = "token")]
        prefix: String,
        key: String,
    },
    /// Write entries in the original's format: one {prefix}_{md5}.json file each, or JSONL.
    Export {
        /// Output directory (files) or file (jsonl; `-` for standard output).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Files)]
        format: Format,
        /// Only entries of this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Export expired entries too.
        #[arg(long)]
        include_expired: bool,
        /// Only the entries of these logical names ({prefix}_{md5}, `.json` optional; repeat).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Print one entry by its logical name ({prefix}_{md5}, `.json` optional) exactly as the
    /// original's file held it (the bytes `export` writes; expired entries too; exit 1 if none).
    Show { name: String },
    /// Import a directory of the original's {prefix}_{md5}.json files or a JSONL export.
    Import { src: PathBuf },
    /// List entries: logical name, prefix, age, value size, key preview.
    Ls {
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many lines.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Remove expired entries and reclaim their space.
    ClearExpired,
    /// Remove every entry (the original's entry files too; other files stay).
    Clear,
    /// Delete this cache's keys (its namespace) from the shared tier given by --redis.
    ClearShared,
    /// Merge appended records into a new index; rewrite mostly-dead segments.
    Compact,
    /// Check every file: headers, checksums, index against segments, orphans (exit 2 if unsound).
    Verify,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Files,
    Jsonl,
}

type CliResult = Result<(), (u8, String)>;

fn fail(msg: impl std::fmt::Display) -> (u8, String) {
    (EXIT_FAILED, msg.to_string())
}

/// The cache as a monitor opens it: it must exist, and the monitor's own handle does not
/// count as one of the pool's processes.
fn open_monitor(cli: &Cli) -> Result<Cache, (u8, String)> {
    open_with(cli, true, false)
}

fn open(cli: &Cli, must_exist: bool) -> Result<Cache, (u8, String)> {
    open_with(cli, must_exist, true)
}

fn open_with(cli: &Cli, must_exist: bool, in_pool: bool) -> Result<Cache, (u8, String)> {
    if must_exist && !cli.dir.is_dir() {
        return Err(fail(format!(
            "{} is not a directory (use --dir or TOKCACHE_DIR)",
            cli.dir.display()
        )));
    }
    if !(cli.ttl_hours.is_finite() && cli.ttl_hours > 0.0) {
        return Err(fail("--ttl-hours must be a positive number"));
    }
    let mut builder = Cache::builder(&cli.dir)
        .ttl_hours(cli.ttl_hours)
        .count_in_pool(in_pool);
    if let Some(n) = cli.max_disk_bytes {
        builder = builder.max_disk_bytes(n);
    }
    if let Some(url) = &cli.redis {
        builder = builder
            .redis(url)
            .redis_namespace(&cli.redis_namespace)
            .redis_timeout(Duration::from_millis(cli.redis_timeout_ms.max(1)));
    }
    builder.open().map_err(fail)
}

fn writable(cache: &Cache) -> CliResult {
    match cache.storage() {
        Storage::Disk => Ok(()),
        s => Err(fail(format!(
            "{} is not writable ({s:?})",
            cache.dir().display()
        ))),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
    {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn preview(key: &str) -> String {
    let mut p: String = key.chars().take(60).flat_map(char::escape_debug).collect();
    if key.chars().count() > 60 {
        p.push('…');
    }
    p
}

fn stats(cache: &Cache, json: bool, prometheus: bool) -> CliResult {
    let s = cache.get_stats();
    let pool = cache.pool_stats().map_err(fail)?;
    if prometheus {
        print!("{}", metrics::prometheus(&pool, &s, 20));
        return Ok(());
    }
    if json {
        let mut v = serde_json::to_value(&s).map_err(fail)?;
        v["pool"] = metrics::pool_json(&pool);
        println!("{}", serde_json::to_string(&v).map_err(fail)?);
        return Ok(());
    }
    println!("directory:        {}", s.temp_dir);
    println!("entries on disk:  {}", s.disk_files);
    println!("live bytes:       {}", bytes(s.live_bytes));
    println!(
        "dead bytes:       {} (reclaimed by compaction)",
        bytes(s.dead_bytes)
    );
    println!("segment bytes:    {}", bytes(s.segment_bytes));
    let bound = s
        .max_disk_bytes
        .map_or_else(|| "no bound".to_string(), |b| format!("bound {}", bytes(b)));
    println!("disk bytes:       {} ({bound})", bytes(s.disk_bytes));
    println!(
        "disk evictions:   {} (entries; expired entries reclaimed: {})",
        s.disk_evictions, s.expired_reclaimed
    );
    println!("index generation: {}", s.index_generation);
    println!("recent index:     {} records", s.recent_index_records);
    println!("appended since:   {} records", s.tail_records);
    println!("storage:          {:?}", s.storage);
    print!("{}", metrics::pool_text(&pool));
    if let Some(t) = &s.shared {
        println!(
            "shared tier:      {} hits, {} misses, {} errors, {} timeouts, {} written, {} dropped",
            t.hits, t.misses, t.errors, t.timeouts, t.written, t.dropped
        );
    }
    Ok(())
}

/// Which entries `export` and `show` take: of a prefix, of some logical names.
struct Filter<'a> {
    prefix: Option<&'a str>,
    /// Logical names (`.json` left off); empty: any.
    names: Vec<String>,
    /// The prefixes those names have (`{prefix}_{md5}`): only their entries are hashed.
    name_prefixes: Vec<String>,
}

impl<'a> Filter<'a> {
    fn new(prefix: Option<&'a str>, names: &[String]) -> Result<Self, (u8, String)> {
        let mut f = Filter {
            prefix,
            names: Vec::new(),
            name_prefixes: Vec::new(),
        };
        for n in names {
            let n = n.strip_suffix(".json").unwrap_or(n);
            let ok = n.rsplit_once('_').filter(|(p, md5)| {
                !p.is_empty()
                    && md5.len() == 32
                    && md5
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            let Some((p, _)) = ok else {
                return Err(fail(format!(
                    "{n}: not a logical name ({{prefix}}_{{md5 of the key, 32 lower-case hex digits}})"
                )));
            };
            f.name_prefixes.push(p.to_string());
            f.names.push(n.to_string());
        }
        Ok(f)
    }

    fn takes(&self, e: &tokcache::Entry<'_>) -> bool {
        if self.prefix.is_some_and(|p| p != e.prefix()) {
            return false;
        }
        self.names.is_empty()
            || (self.name_prefixes.iter().any(|p| p == e.prefix())
                && self.names.contains(&e.logical_name()))
    }
}

/// `show NAME`: the entry's original JSON, byte for byte as `export` writes its file (a newline
/// after it only on a terminal).
fn show(cache: &Cache, name: &str) -> CliResult {
    let filter = Filter::new(None, &[name.to_string()])?;
    let mut found = None;
    cache.for_each_entry(|e| {
        if found.is_none() && filter.takes(e) {
            found = Some(e.to_original_json());
        }
    });
    match found {
        Some(Some(json)) => {
            let mut out = io::stdout().lock();
            out.write_all(json.as_bytes()).map_err(fail)?;
            if out.is_terminal() {
                writeln!(out).map_err(fail)?;
            }
            Ok(())
        }
        Some(None) => Err(fail(format!(
            "{name}: the stored value cannot be written as JSON"
        ))),
        None => Err((EXIT_NOT_FOUND, format!("{name}: no such entry"))),
    }
}

fn export(
    cache: &Cache,
    out: &Path,
    format: Format,
    filter: &Filter<'_>,
    include_expired: bool,
) -> CliResult {
    let total = cache.get_stats().disk_files;
    let pb = bar(total, "export");
    let mut written = 0u64;
    let mut failed: Option<String> = None;
    let mut sink: Box<dyn Write> = match format {
        Format::Files => {
            fs::create_dir_all(out)
                .map_err(|e| fail(format!("cannot create {}: {e}", out.display())))?;
            Box::new(io::sink())
        }
        Format::Jsonl if out == Path::new("-") => Box::new(BufWriter::new(io::stdout().lock())),
        Format::Jsonl => {
            Box::new(BufWriter::new(fs::File::create(out).map_err(|e| {
                fail(format!("cannot create {}: {e}", out.display()))
            })?))
        }
    };
    cache.for_each_entry(|e| {
        pb.inc(1);
        if failed.is_some() || (!include_expired && e.is_expired()) || !filter.takes(e) {
            return;
        }
        let Some(json) = e.to_original_json() else {
            failed = Some(format!(
                "entry {} cannot be written as JSON",
                e.logical_name()
            ));
            return;
        };
        let result = match format {
            Format::Files => fs::write(out.join(format!("{}.json", e.logical_name())), json),
            Format::Jsonl => writeln!(sink, "{json}"),
        };
        match result {
            Ok(()) => written += 1,
            Err(err) => failed = Some(format!("cannot write {}: {err}", out.display())),
        }
    });
    pb.finish_and_clear();
    sink.flush().map_err(fail)?;
    if let Some(f) = failed {
        return Err(fail(f));
    }
    eprintln!("exported {written} entries to {}", out.display());
    Ok(())
}

#[derive(Default)]
struct ImportSummary {
    imported: u64,
    expired: u64,
    not_entries: Vec<String>,
    rejected: Vec<(String, String)>,
}

fn import(cache: &Cache, src: &Path) -> CliResult {
    writable(cache)?;
    let mut sum = ImportSummary::default();
    let take = |what: String, r: tokcache::Result<bool>, sum: &mut ImportSummary| match r {
        Ok(true) => sum.imported += 1,
        Ok(false) => sum.expired += 1,
        Err(e) => sum.rejected.push((what, e.to_string())),
    };
    if src.is_dir() {
        let mut paths: Vec<PathBuf> = fs::read_dir(src)
            .map_err(|e| fail(format!("cannot read {}: {e}", src.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        let pb = bar(paths.len() as u64, "import");
        for p in paths {
            pb.inc(1);
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if tokcache::original::is_file_name(&name) {
                take(name, tokcache::original::import_file(cache, &p), &mut sum);
            } else {
                sum.not_entries.push(name);
            }
        }
        pb.finish_and_clear();
    } else {
        let file =
            fs::File::open(src).map_err(|e| fail(format!("cannot open {}: {e}", src.display())))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let pb = bar(len, "import");
        for (n, line) in io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| fail(format!("cannot read {}: {e}", src.display())))?;
            pb.inc(line.len() as u64 + 1);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            take(
                format!("line {}", n + 1),
                tokcache::original::import_entry(cache, line),
                &mut sum,
            );
        }
        pb.finish_and_clear();
    }
    cache.flush().map_err(fail)?;
    println!(
        "imported {}, skipped as expired {}, rejected {}, not entries {}",
        sum.imported,
        sum.expired,
        sum.rejected.len(),
        sum.not_entries.len()
    );
    for (what, why) in &sum.rejected {
        println!("rejected {what}: {why}");
    }
    for name in &sum.not_entries {
        println!("skipped {name}: not an entry file ({{prefix}}_{{md5}}.json)");
    }
    Ok(())
}

fn ls(cache: &Cache, prefix: Option<&str>, limit: Option<usize>) {
    let mut shown = 0usize;
    cache.for_each_entry(|e| {
        if limit.is_some_and(|l| shown >= l) || prefix.is_some_and(|p| p != e.prefix()) {
            return;
        }
        shown += 1;
        let expired = if e.is_expired() { " (expired)" } else { "" };
        println!(
            "{}\t{}\t{}{expired}\t{}\t{}",
            e.logical_name(),
            e.prefix(),
            age(e.age_secs()),
            bytes(e.value_len() as u64),
            preview(e.key())
        );
    });
}

fn run(cli: Cli) -> CliResult {
    match &cli.cmd {
        Cmd::Stats { json, prometheus } => stats(&open_monitor(&cli)?, *json, *prometheus),
        Cmd::ServeMetrics { listen } => metrics::serve(&open_monitor(&cli)?, listen).map_err(fail),
        Cmd::Top => metrics::top(&open_monitor(&cli)?).map_err(fail),
        Cmd::Get { prefix, key } => {
            // Through a shared tier, a machine reads before anything made its directory.
            let cache = open(&cli, cli.redis.is_none())?;
            tokcache::validate_prefix(prefix).map_err(fail)?;
            match cache.get_ref(prefix, key) {
                Some(v) => {
                    println!(
                        "{}",
                        v.to_json_string()
                            .ok_or_else(|| fail("stored value is not valid JSON"))?
                    );
                    Ok(())
                }
                None => Err((
                    EXIT_NOT_FOUND,
                    format!("{prefix}/{}: not found", preview(key)),
                )),
            }
        }
        Cmd::Set {
            prefix,
            key,
            value_json,
        } => {
            let value: serde_json::Value = serde_json::from_str(value_json)
                .map_err(|e| fail(format!("VALUE_JSON is not JSON: {e}")))?;
            let cache = open(&cli, false)?;
            writable(&cache)?;
            cache.set(prefix, key, &value).map_err(fail)?;
            cache.flush().map_err(fail)
        }
        Cmd::Rm { prefix, key } => {
            let cache = open(&cli, true)?;
            writable(&cache)?;
            if !cache.remove(prefix, key).map_err(fail)? {
                return Err((
                    EXIT_NOT_FOUND,
                    format!("{prefix}/{}: not found", preview(key)),
                ));
            }
            cache.flush().map_err(fail)
        }
        Cmd::Export {
            out,
            format,
            prefix,
            include_expired,
            names,
        } => export(
            &open(&cli, true)?,
            out,
            *format,
            &Filter::new(prefix.as_deref(), names)?,
            *include_expired,
        ),
        Cmd::Show { name } => show(&open(&cli, true)?, name),
        Cmd::Import { src } => import(&open(&cli, false)?, src),
        Cmd::Ls { prefix, limit } => {
            ls(&open(&cli, true)?, prefix.as_deref(), *limit);
            Ok(())
        }
        Cmd::ClearExpired => {
            let cache = open(&cli, true)?;
            writable(&cache)?;
            let before = cache.get_stats().disk_bytes;
            let n = cache.clear_expired().map_err(fail)?;
            let after = cache.get_stats().disk_bytes;
            println!(
                "removed {n} expired entries, freed {}",
                bytes(before.saturating_sub(after))
            );
            Ok(())
        }
        Cmd::Clear => {
            let cache = open(&cli, true)?;
            writable(&cache)?;
            let s = cache.get_stats();
            cache.clear_all().map_err(fail)?;
            println!(
                "removed {} entries, freed {}",
                s.disk_files,
                bytes(s.segment_bytes)
            );
            Ok(())
        }
        Cmd::ClearShared => {
            if cli.redis.is_none() {
                return Err(fail("clear-shared needs --redis (or TOKCACHE_REDIS)"));
            }
            let n = open(&cli, false)?.clear_shared().map_err(fail)?;
            println!("removed {n} keys from the shared tier");
            Ok(())
        }
        Cmd::Compact => {
            let cache = open(&cli, true)?;
            writable(&cache)?;
            let r = cache.compact().map_err(fail)?;
            println!(
                "generation {}: freed {}, rewrote {} segments",
                r.generation,
                bytes(r.bytes_freed),
                r.segments_rewritten
            );
            Ok(())
        }
        Cmd::Verify => {
            let cache = open(&cli, true)?;
            let pb = bar(0, "verify");
            pb.enable_steady_tick(Duration::from_millis(200));
            let report = cache.verify(|n| pb.set_position(n));
            pb.finish_and_clear();
            println!(
                "checked {} records and {} index slots: {}",
                report.records_checked,
                report.slots_checked,
                match (report.is_sound(), report.litter.len()) {
                    (false, _) => "PROBLEMS".to_string(),
                    (true, 0) => "sound".to_string(),
                    (true, n) => format!(
                        "sound ({n} file(s) of litter: left by an interrupted writer, \
                         removed by the next compaction)"
                    ),
                }
            );
            for p in &report.problems {
                println!("problem: {p}");
            }
            for l in &report.litter {
                println!("litter: {l}");
            }
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err((EXIT_FAILED, format!("{} problems", report.problems.len())))
            }
        }
    }
}

/// Prints the library's warnings (a rebuilt index, a skipped record) on standard error, so that
/// what opening the cache had to repair is not silent.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "tokcache: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    static LOGGER: StderrLog = StderrLog;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("tokcache: {msg}");
            ExitCode::from(code)
        }
    }
}
