//! Counting conversations: `count_messages` equals OpenAI's cookbook rule applied to the
//! tokenizer directly, for conversations of every kind, and shares its entries with
//! `get_token_count` (and so with every other caller and process).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::Rng;
use tokcache::{Cache, ChatFormat, ChatMessage};

/// The cookbook's `num_tokens_from_messages`, on the tokenizer itself.
fn cookbook(messages: &[ChatMessage<'_>], f: ChatFormat, encode: impl Fn(&str) -> usize) -> u64 {
    let mut n = f.reply_tokens;
    for m in messages {
        n += f.tokens_per_message + encode(m.role) as i64 + encode(m.content) as i64;
        if let Some(name) = m.name {
            n += f.tokens_per_name + encode(name) as i64;
        }
        n += m.extra.iter().map(|e| encode(e) as i64).sum::<i64>();
    }
    u64::try_from(n).unwrap()
}

const PIECES: &[&str] = &[
    "Hello, how are you?",
    "Привет, как дела? ",
    "日本語のテキストです。",
    "fn main() { println!(\"{}\", 1 + 2); }\n",
    "    def f(x):\n        return x ** 2\n",
    "🙂🚀 emoji and ZWJ 👩‍👩‍👧",
    "",
    " ",
    "<|endoftext|> is just text here",
    "مرحبا بالعالم",
];

fn text(rng: &mut Rng) -> String {
    let parts = match rng.below(10) {
        0 => 0,
        1 => 3000, // ~50 KB
        _ => rng.below(40) as usize,
    };
    (0..parts)
        .map(|_| PIECES[rng.below(PIECES.len() as u64) as usize])
        .collect()
}

#[test]
fn counts_equal_the_cookbook_rule_on_tiktoken() {
    let bpe = tiktoken_rs::cl100k_base().unwrap();
    let encode = |s: &str| bpe.encode_ordinary(s).len();
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let mut rng = Rng(5);
    let roles = ["system", "user", "assistant", "tool"];
    for round in 0..30 {
        let texts: Vec<String> = (0..1 + rng.below(40)).map(|_| text(&mut rng)).collect();
        let names: Vec<Option<String>> = texts
            .iter()
            .map(|_| (rng.below(4) == 0).then(|| format!("user_{}", rng.below(5))))
            .collect();
        let extra = ["call_abc123".to_string()];
        let extras: Vec<&str> = extra.iter().map(String::as_str).collect();
        let messages: Vec<ChatMessage<'_>> = texts
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (t, name))| ChatMessage {
                role: roles[i % roles.len()],
                content: t,
                name: name.as_deref(),
                extra: if i % 7 == 3 { &extras } else { &[] },
            })
            .collect();
        let format = if round % 3 == 0 {
            ChatFormat {
                tokens_per_message: 4,
                tokens_per_name: -1,
                reply_tokens: 2,
            }
        } else {
            ChatFormat::default()
        };
        let want = cookbook(&messages, format, encode);
        // Cold (partly: earlier rounds stored some values), then all cached.
        assert_eq!(
            cache
                .count_messages(&messages, "cl100k_base", format, encode)
                .unwrap(),
            want,
            "round {round}"
        );
        let calls = AtomicUsize::new(0);
        let counting = |s: &str| {
            calls.fetch_add(1, Ordering::Relaxed);
            encode(s)
        };
        assert_eq!(
            cache
                .count_messages(&messages, "cl100k_base", format, counting)
                .unwrap(),
            want
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            0,
            "round {round}: all cached"
        );
        // The entries are the ones count_tokens uses.
        for t in &texts {
            assert_eq!(
                cache.get_token_count("cl100k_base", t),
                Some(encode(t) as u64)
            );
        }
    }
}

#[test]
fn one_new_message_encodes_that_message_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let words = |s: &str| s.split_whitespace().count();
    let texts: Vec<String> = (0..40).map(|i| format!("message {i} says hello")).collect();
    let mut chat: Vec<ChatMessage<'_>> =
        texts.iter().map(|t| ChatMessage::new("user", t)).collect();
    cache
        .count_messages(&chat, "cl100k_base", ChatFormat::default(), words)
        .unwrap();
    let new = "a brand new message".to_string();
    chat.push(ChatMessage::new("user", &new));
    let seen = std::sync::Mutex::new(Vec::new());
    let n = cache
        .count_messages(&chat, "cl100k_base", ChatFormat::default(), |s| {
            seen.lock().unwrap().push(s.to_string());
            words(s)
        })
        .unwrap();
    assert_eq!(seen.into_inner().unwrap(), vec![new.clone()]);
    assert_eq!(n, cookbook(&chat, ChatFormat::default(), words));
}

#[test]
fn a_text_repeated_in_a_conversation_is_encoded_once_and_counted_each_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path()).unwrap();
    let calls = AtomicUsize::new(0);
    let encode = |s: &str| {
        calls.fetch_add(1, Ordering::Relaxed);
        s.len()
    };
    let chat = vec![ChatMessage::new("user", "same text"); 10];
    let n = cache
        .count_messages(&chat, "o200k_base", ChatFormat::default(), encode)
        .unwrap();
    assert_eq!(n, 3 + 10 * (3 + 4 + 9));
    assert_eq!(calls.load(Ordering::Relaxed), 2); // "user" and "same text"
}
