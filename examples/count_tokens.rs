//! The main job: count the tokens of real chat conversations with tiktoken's `cl100k_base`
//! through the cache, as an LLM proxy does on every turn, first in this process and then in a
//! second, fresh process that finds everything on disk.
//!
//!     cargo run --release --example count_tokens [-- --dir temp --data examples/data]
//!
//! Each file of `--data` is one conversation; messages are separated by lines holding `---`.
//! On turn t the proxy counts every message so far and the whole prompt, as the original did
//! (prefix `token_count`, key `tokenizer:cl100k_base:{text}`); then it counts each whole
//! conversation turn by turn as a chat model sees it (`Cache::count_messages`: OpenAI's
//! cookbook rule, each message's values looked up, the new ones tokenized), checked against
//! the rule applied to the tokenizer directly.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use tiktoken_rs::CoreBPE;
use tokcache::{Cache, ChatFormat, ChatMessage};

struct Args {
    dir: PathBuf,
    data: PathBuf,
    child: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("temp"),
        data: Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data"),
        child: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => args.dir = it.next().ok_or("--dir needs a value")?.into(),
            "--data" => args.data = it.next().ok_or("--data needs a value")?.into(),
            "--child" => args.child = true,
            "-h" | "--help" => {
                return Err("usage: count_tokens [--dir DIR (default temp)] [--data DIR (default examples/data)]".into());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

/// The conversations of `data`: each file's messages.
fn conversations(data: &Path) -> Result<Vec<Vec<String>>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let body =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        out.push(
            body.split("\n---\n")
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    if out.iter().all(Vec::is_empty) {
        return Err(format!("no .txt conversations in {}", data.display()));
    }
    Ok(out)
}

/// Every text the proxy counts, in order: per turn, each message so far and the whole prompt.
fn workload(chats: &[Vec<String>]) -> Vec<String> {
    let mut texts = Vec::new();
    for messages in chats {
        for turn in 1..=messages.len() {
            texts.extend(
                messages[..turn]
                    .iter()
                    .map(std::string::ToString::to_string),
            );
            texts.push(messages[..turn].join("\n\n"));
        }
    }
    texts
}

/// A conversation's messages as a chat model gets them: a system prompt, then the user and
/// the assistant in turn.
fn chat_messages(messages: &[String]) -> Vec<ChatMessage<'_>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match i {
                0 => "system",
                i if i % 2 == 1 => "user",
                _ => "assistant",
            };
            ChatMessage::new(role, m)
        })
        .collect()
}

/// The cookbook rule on the tokenizer itself.
fn cookbook(bpe: &CoreBPE, chat: &[ChatMessage<'_>]) -> u64 {
    let f = ChatFormat::default();
    let per_message: i64 = chat
        .iter()
        .map(|m| f.tokens_per_message + count(bpe, m.role) as i64 + count(bpe, m.content) as i64)
        .sum();
    (f.reply_tokens + per_message) as u64
}

/// Every conversation counted turn by turn, as a proxy does on each request: the time with
/// the tokenizer alone and through the cache (checked), per turn.
fn whole_conversations(
    cache: &Cache,
    bpe: &CoreBPE,
    chats: &[Vec<String>],
) -> Result<(usize, Duration, Duration), String> {
    let turns: Vec<Vec<ChatMessage<'_>>> = chats
        .iter()
        .flat_map(|m| (1..=m.len()).map(move |t| chat_messages(&m[..t])))
        .collect();
    let start = Instant::now();
    let want: Vec<u64> = turns.iter().map(|c| cookbook(bpe, c)).collect();
    let tokenizer = start.elapsed();
    let start = Instant::now();
    let mut got = Vec::with_capacity(turns.len());
    for chat in &turns {
        got.push(
            cache
                .count_messages(chat, "cl100k_base", ChatFormat::default(), |t| {
                    count(bpe, t) as usize
                })
                .map_err(|e| format!("cache: {e}"))?,
        );
    }
    let cached = start.elapsed();
    if got != want {
        return Err("count_messages disagrees with the cookbook rule".into());
    }
    Ok((turns.len(), tokenizer, cached))
}

fn count(bpe: &CoreBPE, text: &str) -> u64 {
    bpe.encode_with_special_tokens(text).len() as u64
}

/// Runs the workload through the cache; returns the elapsed time and checks every count.
fn through_cache(cache: &Cache, bpe: &CoreBPE, texts: &[String]) -> Result<Duration, String> {
    let start = Instant::now();
    let mut counts = Vec::with_capacity(texts.len());
    for text in texts {
        // The entry of key `tokenizer:cl100k_base:{text}`, looked up without building it.
        let n = cache
            .token_count_or_insert_with("cl100k_base", text, || count(bpe, text))
            .map_err(|e| format!("cache: {e}"))?;
        counts.push(n);
    }
    let elapsed = start.elapsed();
    for (text, n) in texts.iter().zip(counts) {
        if n != count(bpe, text) {
            return Err(format!(
                "wrong count {n} from the cache for a text of {} bytes",
                text.len()
            ));
        }
    }
    Ok(elapsed)
}

fn per_op(d: Duration, n: usize) -> String {
    format!("{:.2} us", d.as_secs_f64() * 1e6 / n as f64)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let chats = conversations(&args.data)?;
    let texts = workload(&chats);
    let bpe = tiktoken_rs::cl100k_base().map_err(|e| format!("tokenizer: {e}"))?;
    let cache = Cache::open(&args.dir).map_err(|e| e.to_string())?;

    if args.child {
        let elapsed = through_cache(&cache, &bpe, &texts)?;
        let stats = serde_json::to_string(&cache.get_stats()).map_err(|e| e.to_string())?;
        println!("{}\t{stats}", elapsed.as_nanos());
        return Ok(());
    }

    println!("{}\n", cache.banner());
    let bytes: usize = texts.iter().map(String::len).sum();
    println!(
        "workload: {} token counts of texts from {} ({} KiB, largest {} bytes)",
        texts.len(),
        args.data.display(),
        bytes / 1024,
        texts.iter().map(String::len).max().unwrap_or(0)
    );

    let start = Instant::now();
    let total: u64 = texts.iter().map(|t| count(&bpe, t)).sum();
    let tokenizer_only = start.elapsed();
    println!(
        "tokenizer only (no cache):         {:>10} per count, {total} tokens in all",
        per_op(tokenizer_only, texts.len())
    );

    let this_process = through_cache(&cache, &bpe, &texts)?;
    let s = cache.get_stats();
    println!(
        "through the cache, this process:   {:>10} per count ({} computed, {} RAM hits, {} disk hits)",
        per_op(this_process, texts.len()),
        s.misses,
        s.ram_hits,
        s.disk_hits
    );

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(["--child", "--dir"])
        .arg(&args.dir)
        .arg("--data")
        .arg(&args.data)
        .output()
        .map_err(|e| format!("cannot start the second process: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "second process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let (nanos, child_stats) = line
        .trim()
        .split_once('\t')
        .ok_or("second process printed no result")?;
    let child = Duration::from_nanos(
        nanos
            .parse()
            .map_err(|_| "bad timing from the second process")?,
    );
    let child_stats: serde_json::Value =
        serde_json::from_str(child_stats).map_err(|e| e.to_string())?;
    println!(
        "through the cache, fresh process:  {:>10} per count ({} computed, {} disk hits, {} RAM hits)",
        per_op(child, texts.len()),
        child_stats["misses"],
        child_stats["disk_hits"],
        child_stats["ram_hits"]
    );
    println!(
        "\nspeed-up over tokenizing: {:.0}x in this process, {:.0}x in a fresh process; every cached count checked against the tokenizer",
        tokenizer_only.as_secs_f64() / this_process.as_secs_f64(),
        tokenizer_only.as_secs_f64() / child.as_secs_f64()
    );
    let (turns, tokenizer, first) = whole_conversations(&cache, &bpe, &chats)?;
    let (_, _, again) = whole_conversations(&cache, &bpe, &chats)?;
    println!(
        "\nwhole conversations, turn by turn (count_messages, the cookbook rule): {turns} turns; \
         tokenizer only {} per turn; through the cache {} per turn the first time (new values \
         tokenized), {} when counted again ({:.0}x); every count checked",
        per_op(tokenizer, turns),
        per_op(first, turns),
        per_op(again, turns),
        tokenizer.as_secs_f64() / again.as_secs_f64()
    );
    println!(
        "\nstats: {}",
        serde_json::to_string_pretty(&cache.get_stats()).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("count_tokens: {e}");
            ExitCode::from(2)
        }
    }
}
