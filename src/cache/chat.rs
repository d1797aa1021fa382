//! Counting a whole conversation: the token counts of every value of every message, looked up
//! in one pass, the misses tokenized (in parallel when there are several) and stored, summed
//! by OpenAI's cookbook rule for chat models. Each value is the entry `count_tokens` uses
//! (prefix `token_count`, key `tokenizer:{encoding}:{text}`), so counts are shared with every
//! other caller and process.

use std::collections::HashMap;

use super::Cache;
use crate::error::Result;

/// One message of a conversation: the values the cookbook rule counts. `name` adds
/// [`ChatFormat::tokens_per_name`]; `extra` holds other string fields (`tool_call_id`, ...),
/// counted as values too.
///
/// ```
/// use tokcache::ChatMessage;
/// let tool = ChatMessage {
///     name: Some("weather"),
///     extra: &["call_42"], // tool_call_id
///     ..ChatMessage::new("tool", "18 degrees, sunny")
/// };
/// assert_eq!((tool.role, tool.name), ("tool", Some("weather")));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ChatMessage<'a> {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: &'a str,
    /// The text (the parts of a multi-part content are `extra` values, or joined by the
    /// caller as the model sees them).
    pub content: &'a str,
    /// The participant's name, if any.
    pub name: Option<&'a str>,
    /// Other string fields of the message, each counted as a value.
    pub extra: &'a [&'a str],
}

impl<'a> ChatMessage<'a> {
    /// A message of `role` with `content`, no name.
    ///
    /// ```
    /// let m = tokcache::ChatMessage::new("user", "How many tokens is this?");
    /// assert_eq!((m.role, m.name, m.extra.len()), ("user", None, 0));
    /// ```
    #[must_use]
    pub fn new(role: &'a str, content: &'a str) -> Self {
        Self {
            role,
            content,
            name: None,
            extra: &[],
        }
    }
}

/// The framing tokens of a chat model's conversation (OpenAI's cookbook: 3, 1, 3 for the
/// gpt-3.5-turbo-0613 / gpt-4 family and later).
///
/// ```
/// use tokcache::ChatFormat;
/// assert_eq!(ChatFormat::default(), ChatFormat { tokens_per_message: 3, tokens_per_name: 1, reply_tokens: 3 });
/// // gpt-3.5-turbo-0301:
/// let old = ChatFormat { tokens_per_message: 4, tokens_per_name: -1, ..ChatFormat::default() };
/// assert_eq!(old.reply_tokens, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatFormat {
    /// Added once per message.
    pub tokens_per_message: i64,
    /// Added once per message that has a name (-1 for gpt-3.5-turbo-0301, whose role is left
    /// out when there is a name).
    pub tokens_per_name: i64,
    /// Added once per conversation: the reply is primed with `<|start|>assistant<|message|>`.
    pub reply_tokens: i64,
}

impl Default for ChatFormat {
    fn default() -> Self {
        Self {
            tokens_per_message: 3,
            tokens_per_name: 1,
            reply_tokens: 3,
        }
    }
}

impl Cache {
    /// The token counts cached for `texts` under `encoding` (as [`Cache::get_token_count`]),
    /// in one pass.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set_token_count("cl100k_base", "hello", 1)?;
    /// cache.set_token_count("cl100k_base", "hello world", 2)?;
    /// let counts = cache.get_token_counts("cl100k_base", &["hello", "unseen", "hello world"]);
    /// assert_eq!(counts, [Some(1), None, Some(2)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_token_counts(&self, encoding: &str, texts: &[&str]) -> Vec<Option<u64>> {
        texts
            .iter()
            .map(|t| self.get_token_count(encoding, t))
            .collect()
    }

    /// The tokens of a conversation by the cookbook rule: every value of every message
    /// encoded and counted, plus `tokens_per_message` per message, `tokens_per_name` per name,
    /// plus `reply_tokens`. Values are looked up first; the ones missing are counted with
    /// `encode` (on scoped threads, up to the machine's cores, when several are missing;
    /// callers in this process counting the same text at once call it once) and stored.
    ///
    /// ```
    /// use tokcache::{Cache, ChatFormat, ChatMessage};
    /// # let dir = tempfile::tempdir()?;
    /// let cache = Cache::open(dir.path())?;
    /// let chat = [
    ///     ChatMessage::new("system", "You are terse."),
    ///     ChatMessage { name: Some("ann"), ..ChatMessage::new("user", "Count me.") },
    /// ];
    /// let words = |s: &str| s.split_whitespace().count(); // a real tokenizer's encode().len()
    /// let n = cache.count_messages(&chat, "cl100k_base", ChatFormat::default(), words)?;
    /// assert_eq!(n, 3 + (1 + 3) + 3 + (1 + 2 + 1 + 1) + 3);
    /// assert_eq!(cache.get_token_count("cl100k_base", "Count me."), Some(2)); // shared entries
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// What storing a count returns ([`Cache::set_token_count`]); the counts are right even
    /// then, but this returns the error.
    pub fn count_messages<F>(
        &self,
        messages: &[ChatMessage<'_>],
        encoding: &str,
        format: ChatFormat,
        encode: F,
    ) -> Result<u64>
    where
        F: Fn(&str) -> usize + Sync,
    {
        let mut values: Vec<&str> = Vec::with_capacity(messages.len() * 2);
        let mut total: i64 = format.reply_tokens;
        for m in messages {
            total += format.tokens_per_message;
            values.push(m.role);
            values.push(m.content);
            if let Some(name) = m.name {
                values.push(name);
                total += format.tokens_per_name;
            }
            values.extend_from_slice(m.extra);
        }
        let found = self.get_token_counts(encoding, &values);
        // Each text missing is counted once, however often it occurs.
        let mut missing: HashMap<&str, i64> = HashMap::new();
        for (text, n) in values.iter().zip(found) {
            match n {
                Some(n) => total += count_i64(n),
                None => *missing.entry(text).or_default() += 1,
            }
        }
        let missing: Vec<(&str, i64)> = missing.into_iter().collect();
        let count =
            |text: &str| self.token_count_or_insert_with(encoding, text, || encode(text) as u64);
        // (Asked only when there are several: it reads the cgroup's CPU limit, tens of us.)
        let threads = if missing.len() < 2 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        };
        let counted: Vec<Result<u64>> = if threads < 2 {
            missing.iter().map(|(t, _)| count(t)).collect()
        } else {
            let per = missing.len().div_ceil(threads.min(missing.len()));
            std::thread::scope(|s| {
                let handles: Vec<_> = missing
                    .chunks(per)
                    .map(|chunk| {
                        s.spawn(move || chunk.iter().map(|(t, _)| count(t)).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| match h.join() {
                        Ok(v) => v,
                        Err(panic) => std::panic::resume_unwind(panic),
                    })
                    .collect::<Vec<Result<u64>>>()
            })
        };
        for ((_, times), n) in missing.iter().zip(counted) {
            total += count_i64(n?) * times;
        }
        // Only a rule with negative framing tokens can go below 0.
        Ok(u64::try_from(total).unwrap_or(0))
    }
}

fn count_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
