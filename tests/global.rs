//! The process-wide instance, in a child process so that its environment is its own.

mod common;

use common::{child_spec, expect_success, spawn_child};

#[test]
#[ignore = "entry point of the child process"]
fn global_child() {
    let dir = child_spec("TOKCACHE_DIR");
    let cache = tokcache::get_persistent_cache();
    assert_eq!(cache.dir(), std::path::Path::new(&dir));
    assert!(
        std::ptr::eq(cache, tokcache::get_persistent_cache()),
        "one instance per process"
    );
    cache.set("test", "global", &1u64).unwrap();
    cache.flush().unwrap();
}

#[test]
fn get_persistent_cache_uses_tokcache_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("global");
    expect_success(spawn_child(
        "global_child",
        "TOKCACHE_DIR",
        dir.to_str().unwrap(),
    ));
    assert_eq!(
        tokcache::Cache::open(&dir)
            .unwrap()
            .get::<u64>("test", "global"),
        Some(1)
    );
}

#[test]
fn cache_is_send_and_sync() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<tokcache::Cache>();
    shareable::<tokcache::ValueRef>();
}
