//! Timing helpers of the benches that time operations one by one (keys, shared).

use std::time::Instant;

/// The median and the 99th percentile of `ns` (nanoseconds), in microseconds.
pub fn median_p99(mut ns: Vec<u64>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// `median us [p99]`.
pub fn fmt((median, p99): (f64, f64)) -> String {
    format!("{median:.2} us [{p99:.1}]")
}

/// Per-operation times of `f` over `order`.
pub fn timed(order: &[usize], mut f: impl FnMut(usize)) -> Vec<u64> {
    order
        .iter()
        .map(|&i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_nanos() as u64
        })
        .collect()
}

/// A fixed shuffle of `0..n`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}
