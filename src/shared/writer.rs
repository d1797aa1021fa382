//! The background writer: a bounded queue that `set` and `remove` hand entries to without
//! waiting, and a thread that pipelines them to the shared tier, each with an expiry at its
//! timestamp + TTL. `flush` waits for what was queued before it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::Counters;
use super::link::{Connection, Link};
use crate::clock::Clock;
use crate::keys::Key;
use crate::pyjson;
use crate::value::Stored;

/// Entries sent in one pipeline at most.
const BATCH: usize = 1024;

/// What the writer is asked to do.
pub(super) enum Op {
    /// An entry set in this process: written as the original's JSON object.
    Put {
        prefix: Box<str>,
        key: Vec<u8>,
        value: Stored,
        timestamp: f64,
    },
    /// An entry already in the original's form (an import), under its Redis key.
    Original {
        name: String,
        json: Vec<u8>,
        timestamp: f64,
    },
    Remove {
        prefix: Box<str>,
        key: Vec<u8>,
    },
}

#[derive(Default)]
struct State {
    ops: VecDeque<Op>,
    /// Operations queued and operations done (written or dropped) since the start: `flush`
    /// waits until `done` reaches the `pushed` it saw.
    pushed: u64,
    done: u64,
    /// Whether the thread sleeps for want of work (only then is it woken).
    waiting: bool,
    stop: bool,
}

struct Queue {
    state: Mutex<State>,
    work: Condvar,
    progress: Condvar,
    capacity: usize,
}

pub(super) struct Writer {
    queue: Arc<Queue>,
    link: Arc<Link>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer's thread (without one, every entry is dropped, and counted).
    pub(super) fn start(
        link: Arc<Link>,
        clock: Arc<dyn Clock>,
        ttl_secs: f64,
        capacity: usize,
    ) -> Self {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            work: Condvar::new(),
            progress: Condvar::new(),
            capacity,
        });
        let (q, l) = (Arc::clone(&queue), Arc::clone(&link));
        let thread = std::thread::Builder::new()
            .name("tokcache-shared".into())
            .spawn(move || run(&q, &l, &*clock, ttl_secs))
            .map_err(|e| log::warn!("no writer thread for the shared tier: {e}"))
            .ok();
        Self {
            queue,
            link,
            thread,
        }
    }

    /// Queues `op`, or drops it (counted) if the queue is full.
    pub(super) fn push(&self, op: Op) {
        let q = &self.queue;
        let mut st = q.state.lock();
        if self.thread.is_none() || st.ops.len() >= q.capacity {
            drop(st);
            self.link.counters.drop_n(1);
            return;
        }
        st.ops.push_back(op);
        st.pushed += 1;
        if st.waiting {
            q.work.notify_one();
        }
    }

    /// Waits until every operation queued before this call is done.
    pub(super) fn flush(&self) {
        let q = &self.queue;
        let mut st = q.state.lock();
        let target = st.pushed;
        while st.done < target {
            q.progress.wait(&mut st);
        }
    }

    pub(super) fn queued(&self) -> u64 {
        self.queue.state.lock().ops.len() as u64
    }
}

impl Drop for Writer {
    /// Writes what is queued (each pipeline bounded by the timeout), then ends the thread.
    fn drop(&mut self) {
        self.queue.state.lock().stop = true;
        self.queue.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: takes batches off the queue until told to stop and the queue is empty.
fn run(q: &Queue, link: &Link, clock: &dyn Clock, ttl_secs: f64) {
    let mut conn = None;
    loop {
        let batch: Vec<Op> = {
            let mut st = q.state.lock();
            while st.ops.is_empty() {
                if st.stop {
                    return;
                }
                st.waiting = true;
                q.work.wait(&mut st);
                st.waiting = false;
            }
            let n = st.ops.len().min(BATCH);
            st.ops.drain(..n).collect()
        };
        let n = batch.len() as u64;
        write(link, &mut conn, batch, clock, ttl_secs);
        let mut st = q.state.lock();
        st.done += n;
        q.progress.notify_all();
    }
}

/// Sends one batch in one pipeline; on a failure the batch is dropped (counted) and the tier
/// backs off, so that the queue keeps moving and `flush` keeps its bound.
fn write(
    link: &Link,
    conn: &mut Option<Connection>,
    batch: Vec<Op>,
    clock: &dyn Clock,
    ttl_secs: f64,
) {
    let n = batch.len() as u64;
    let counters = &link.counters;
    if link.backing_off() {
        counters.drop_n(n);
        return;
    }
    let now = clock.now();
    let cmds: Vec<redis::Cmd> = batch
        .into_iter()
        .filter_map(|op| command(link, op, now, ttl_secs))
        .collect();
    if cmds.is_empty() {
        return;
    }
    let sent = cmds.len() as u64;
    let mut c = match conn.take().map_or_else(|| link.connect(), Ok) {
        Ok(c) => c,
        Err(e) => {
            link.failed(&e);
            counters.drop_n(sent);
            return;
        }
    };
    match c.pipeline(cmds) {
        Ok(()) => {
            link.succeeded();
            Counters::add(&counters.written, sent);
            *conn = Some(c);
        }
        Err(e) => {
            link.failed(&e);
            counters.drop_n(sent);
        }
    }
}

/// The Redis command of one operation; `None` for an entry that has expired already (it would
/// be a miss there) or that cannot be written (not UTF-8: never from the API).
fn command(link: &Link, op: Op, now: f64, ttl_secs: f64) -> Option<redis::Cmd> {
    let set = |name: &str, json: &[u8], timestamp: f64| {
        let left = timestamp + ttl_secs - now;
        if left.is_nan() || left <= 0.0 {
            return None;
        }
        // Whole milliseconds, at least one; a TTL of centuries is capped (it is no TTL).
        let ms = (left * 1000.0).ceil().min(1e15) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(name).arg(json).arg("PX").arg(ms.max(1));
        Some(cmd)
    };
    match op {
        Op::Put {
            prefix,
            key,
            value,
            timestamp,
        } => {
            let key_str = std::str::from_utf8(&key).ok()?;
            let mut json = String::with_capacity(key.len() + 96);
            pyjson::write_entry(&mut json, key_str, &value, timestamp, &prefix)?;
            set(
                &link.key_of(&prefix, &Key::whole(&key)),
                json.as_bytes(),
                timestamp,
            )
        }
        Op::Original {
            name,
            json,
            timestamp,
        } => set(&name, &json, timestamp),
        Op::Remove { prefix, key } => {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(link.key_of(&prefix, &Key::whole(&key)));
            Some(cmd)
        }
    }
}
