//! The engines measured side by side: tokcache, the original's design (one md5-named JSON file
//! per entry, written and read as the Python class does, in Rust), and with `--features compare`
//! LMDB (heed) and redb. Each stores `key -> u64` under one prefix.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokcache::Cache;

pub const PREFIX: &str = "token_count";

pub trait Engine: Sized {
    /// Whether several processes may open the same directory at once.
    const MULTI_PROCESS: bool = true;
    /// The longest key the engine accepts.
    const MAX_KEY: usize = usize::MAX;
    /// `ram` turns on the engine's own RAM tier where it has one.
    fn open(dir: &Path, ram: bool) -> Self;
    fn set(&self, key: &str, value: u64);
    fn get(&self, key: &str) -> Option<u64>;
    /// The values of a batch of keys, in order (default: one `get` each).
    fn get_many(&self, keys: &[String]) -> Vec<Option<u64>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Bulk load for building large caches quickly (default: one `set` each).
    fn load(&self, keys: &mut dyn Iterator<Item = (String, u64)>) {
        for (k, v) in keys {
            self.set(&k, v);
        }
    }
}

pub struct Tok(pub Cache);

impl Engine for Tok {
    fn open(dir: &Path, ram: bool) -> Self {
        Tok(Cache::builder(dir)
            .max_ram_entries(if ram { 100_000 } else { 0 })
            .open()
            .unwrap())
    }
    fn set(&self, key: &str, value: u64) {
        self.0.set(PREFIX, key, &value).unwrap();
    }
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(PREFIX, key)
    }
    fn get_many(&self, keys: &[String]) -> Vec<Option<u64>> {
        self.0.get_many(PREFIX, keys)
    }
}

/// The original: `{prefix}_{md5(key)}.json` files, `json.dump` on set, age from the file's
/// mtime and `json.load` on get; a dict in front when `ram`.
pub struct Original {
    dir: PathBuf,
    ram: Option<Mutex<HashMap<String, u64>>>,
}

impl Original {
    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", tokcache::logical_name(PREFIX, key)))
    }
}

impl Engine for Original {
    fn open(dir: &Path, ram: bool) -> Self {
        fs::create_dir_all(dir).unwrap();
        Original {
            dir: dir.to_path_buf(),
            ram: ram.then(|| Mutex::new(HashMap::new())),
        }
    }
    fn set(&self, key: &str, value: u64) {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let mut json = String::from("{\"key\":");
        tokcache::bench_support::write_str(&mut json, key);
        json.push_str(&format!(",\"value\":{value},\"timestamp\":"));
        tokcache::bench_support::write_float(&mut json, ts);
        json.push_str(",\"prefix\":\"token_count\"}");
        fs::write(self.path(key), json).unwrap();
        if let Some(r) = &self.ram {
            r.lock().insert(key.to_string(), value);
        }
    }
    fn get(&self, key: &str) -> Option<u64> {
        if let Some(v) = self.ram.as_ref().and_then(|r| r.lock().get(key).copied()) {
            return Some(v);
        }
        let path = self.path(key);
        let meta = fs::metadata(&path).ok()?;
        let age = meta.modified().ok()?.elapsed().unwrap_or(Duration::ZERO);
        if age > Duration::from_secs(86_400) {
            return None;
        }
        let obj: serde_json::Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        let v = obj.get("value")?.as_u64()?;
        if let Some(r) = &self.ram {
            r.lock().insert(key.to_string(), v);
        }
        Some(v)
    }
}

#[cfg(feature = "compare")]
pub use compare::{Lmdb, Redb};

#[cfg(feature = "compare")]
mod compare {
    use super::*;
    use heed::types::{Bytes, Str};
    use redb::ReadableDatabase;

    pub struct Lmdb {
        env: heed::Env,
        db: heed::Database<Str, Bytes>,
    }

    impl Engine for Lmdb {
        const MAX_KEY: usize = 511; // LMDB's compile-time key limit

        fn open(dir: &Path, _ram: bool) -> Self {
            fs::create_dir_all(dir).unwrap();
            // SAFETY (bench only): one environment per directory per process, as heed requires;
            // NO_SYNC (no fsync per commit, like tokcache's default) only risks the last
            // transactions on a machine crash, which the bench does not care about.
            #[allow(unsafe_code)]
            let env = unsafe {
                heed::EnvOpenOptions::new()
                    .map_size(64 << 30)
                    .flags(heed::EnvFlags::NO_SYNC)
                    .open(dir)
                    .unwrap()
            };
            let mut wtxn = env.write_txn().unwrap();
            let db = env.create_database(&mut wtxn, None).unwrap();
            wtxn.commit().unwrap();
            Lmdb { env, db }
        }
        fn set(&self, key: &str, value: u64) {
            let mut w = self.env.write_txn().unwrap();
            self.db.put(&mut w, key, &value.to_le_bytes()).unwrap();
            w.commit().unwrap();
        }
        fn get(&self, key: &str) -> Option<u64> {
            let r = self.env.read_txn().unwrap();
            self.db
                .get(&r, key)
                .unwrap()
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        }
        /// One read transaction for the batch.
        fn get_many(&self, keys: &[String]) -> Vec<Option<u64>> {
            let r = self.env.read_txn().unwrap();
            keys.iter()
                .map(|k| {
                    let v = self.db.get(&r, k).unwrap();
                    v.map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                })
                .collect()
        }
        fn load(&self, keys: &mut dyn Iterator<Item = (String, u64)>) {
            let mut w = self.env.write_txn().unwrap();
            for (k, v) in keys {
                self.db.put(&mut w, &k, &v.to_le_bytes()).unwrap();
            }
            w.commit().unwrap();
        }
    }

    const TABLE: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("t");

    pub struct Redb(redb::Database);

    impl Engine for Redb {
        const MULTI_PROCESS: bool = false; // redb: DatabaseAlreadyOpen in a second process

        fn open(dir: &Path, _ram: bool) -> Self {
            fs::create_dir_all(dir).unwrap();
            let db = redb::Database::create(dir.join("db.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(TABLE).unwrap();
            w.commit().unwrap();
            Redb(db)
        }
        fn set(&self, key: &str, value: u64) {
            let mut w = self.0.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            w.open_table(TABLE).unwrap().insert(key, value).unwrap();
            w.commit().unwrap();
        }
        fn get(&self, key: &str) -> Option<u64> {
            let r = self.0.begin_read().unwrap();
            r.open_table(TABLE)
                .unwrap()
                .get(key)
                .unwrap()
                .map(|v| v.value())
        }
        /// One read transaction for the batch.
        fn get_many(&self, keys: &[String]) -> Vec<Option<u64>> {
            let r = self.0.begin_read().unwrap();
            let t = r.open_table(TABLE).unwrap();
            keys.iter()
                .map(|k| t.get(k.as_str()).unwrap().map(|v| v.value()))
                .collect()
        }
        fn load(&self, keys: &mut dyn Iterator<Item = (String, u64)>) {
            let mut w = self.0.begin_write().unwrap();
            w.set_durability(redb::Durability::None).unwrap();
            {
                let mut t = w.open_table(TABLE).unwrap();
                for (k, v) in keys {
                    t.insert(k.as_str(), v).unwrap();
                }
            }
            w.commit().unwrap();
        }
    }
}
