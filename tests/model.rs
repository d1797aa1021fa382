//! Random operation sequences against a `HashMap` model, through two handles on one directory
//! (as two processes would have), with compaction and segment rewriting forced often. Entries
//! are 8 keys under each of 3 prefixes: the same key strings under every prefix.

use std::collections::HashMap;

use proptest::prelude::*;
use tokcache::Cache;

#[derive(Clone, Debug)]
enum Op {
    Set {
        handle: bool,
        key: u8,
        value: u32,
        big: bool,
    },
    Tokens {
        handle: bool,
        key: u8,
        len: u8,
    },
    Remove {
        handle: bool,
        key: u8,
    },
    Get {
        handle: bool,
        key: u8,
    },
    GetMany {
        handle: bool,
        prefix: u8,
        keys: Vec<u8>,
    },
    Compact,
    Reopen,
    ClearAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0..24u8, any::<u32>(), any::<bool>()).prop_map(|(handle, key, value, big)| Op::Set { handle, key, value, big }),
        1 => (any::<bool>(), 0..24u8, 0..40u8).prop_map(|(handle, key, len)| Op::Tokens { handle, key, len }),
        2 => (any::<bool>(), 0..24u8).prop_map(|(handle, key)| Op::Remove { handle, key }),
        6 => (any::<bool>(), 0..24u8).prop_map(|(handle, key)| Op::Get { handle, key }),
        2 => (any::<bool>(), 0..3u8, proptest::collection::vec(0..8u8, 0..40)).prop_map(|(handle, prefix, keys)| Op::GetMany { handle, prefix, keys }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::ClearAll),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Json(String),
    Tokens(Vec<u32>),
}

const PREFIXES: [&str; 3] = ["test", "token_count", "p"];

/// Entry `k`'s prefix.
fn prefix(k: u8) -> &'static str {
    PREFIXES[usize::from(k / 8)]
}

/// Entry `k`'s key: the same 8 strings under each prefix.
fn key(k: u8) -> String {
    // Some keys share a prefix of many bytes, some are long, one is empty.
    match k % 8 {
        0 => String::new(),
        k @ 1..=4 => format!("tokenizer:cl100k_base:{}", "x".repeat(k as usize * 1000)),
        k => format!("k{k}-ü🙂"),
    }
}

fn open(dir: &std::path::Path) -> Cache {
    Cache::builder(dir)
        .max_ram_entries(4)
        .compact_after_records(7)
        .rewrite_segments_with_dead_bytes(0)
        .open()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 1..120)) {
        let tmp = tempfile::tempdir().unwrap();
        let mut handles = [open(tmp.path()), open(tmp.path())];
        let mut model: HashMap<u8, Val> = HashMap::new();
        for op in ops {
            match op {
                Op::Set { handle, key: k, value, big } => {
                    let v = if big { format!("{value}-{}", "v".repeat(3000)) } else { value.to_string() };
                    handles[usize::from(handle)].set(prefix(k), &key(k), &v).unwrap();
                    model.insert(k, Val::Json(v));
                }
                Op::Tokens { handle, key: k, len } => {
                    let t: Vec<u32> = (0..u32::from(len)).map(|i| i * 31 + u32::from(k)).collect();
                    handles[usize::from(handle)].set_tokens(prefix(k), &key(k), &t).unwrap();
                    model.insert(k, Val::Tokens(t));
                }
                Op::Remove { handle, key: k } => {
                    let was = handles[usize::from(handle)].remove(prefix(k), &key(k)).unwrap();
                    prop_assert_eq!(was, model.remove(&k).is_some());
                }
                Op::Get { handle, key: k } => {
                    let c = &handles[usize::from(handle)];
                    let got = match model.get(&k) {
                        Some(Val::Tokens(_)) => c.get_tokens(prefix(k), &key(k)).map(|r| Val::Tokens(r.as_tokens().unwrap().to_vec())),
                        _ => c.get::<String>(prefix(k), &key(k)).map(Val::Json),
                    };
                    prop_assert_eq!(got.as_ref(), model.get(&k));
                }
                Op::GetMany { handle, prefix: p, keys } => {
                    // As JSON: a string value is a JSON string, token ids a JSON array.
                    let entries: Vec<u8> = keys.iter().map(|&k| p * 8 + k).collect();
                    let names: Vec<String> = entries.iter().map(|&k| key(k)).collect();
                    let got = handles[usize::from(handle)]
                        .get_many::<serde_json::Value>(PREFIXES[usize::from(p)], &names);
                    prop_assert_eq!(got.len(), names.len());
                    for ((k, name), got) in entries.iter().zip(&names).zip(got) {
                        let want = model.get(k).map(|v| match v {
                            Val::Json(s) => serde_json::json!(s),
                            Val::Tokens(t) => serde_json::json!(t),
                        });
                        prop_assert_eq!(got, want, "key {:?}", name);
                    }
                }
                Op::Compact => { handles[0].compact().unwrap(); }
                Op::Reopen => { handles = [open(tmp.path()), open(tmp.path())]; }
                Op::ClearAll => { handles[1].clear_all().unwrap(); model.clear(); }
            }
            prop_assert_eq!(handles[0].get_stats().disk_files, model.len() as u64);
        }
        let fresh = open(tmp.path());
        for (&k, v) in &model {
            let got = match v {
                Val::Tokens(_) => fresh.get_tokens(prefix(k), &key(k)).map(|r| Val::Tokens(r.as_tokens().unwrap().to_vec())),
                Val::Json(_) => fresh.get::<String>(prefix(k), &key(k)).map(Val::Json),
            };
            prop_assert_eq!(got.as_ref(), Some(v));
        }
        let mut seen = Vec::new();
        fresh.for_each_entry(|e| seen.push((e.prefix().to_string(), e.key().to_string())));
        seen.sort();
        let mut want: Vec<(String, String)> =
            model.keys().map(|&k| (prefix(k).to_string(), key(k))).collect();
        want.sort();
        prop_assert_eq!(seen, want);
        let report = fresh.verify(|_| {});
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
