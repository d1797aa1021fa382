//! Unit tests of the index: every entry found in an ordered table, the filter of a full
//! index, locations past the limit.

use super::*;

/// Entry `i` of these tests: spread over three segments, at offsets that differ.
fn slot(hash: u64, i: u32) -> Slot {
    Slot {
        hash: slot_hash(hash),
        seg: [7, 3, 4096][i as usize % 3],
        off: i * 12,
    }
}

fn open_body(body: &IndexBody) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.tki");
    std::fs::write(&path, body.to_file_bytes().unwrap()).unwrap();
    let index = Index::open(&path, body.generation, body.seed).unwrap();
    (dir, index)
}

#[test]
fn ordered_table_finds_every_entry_and_no_other() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut hashes: Vec<u64> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect();
    // Crowd the top of the range (overflow past the last bucket), and collide.
    hashes.extend((0..40).map(|i| u64::MAX - (i << 36)));
    hashes.extend([hashes[10], hashes[10], 0, 0]);
    let entries: Vec<Slot> = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| slot(h, i as u32))
        .collect();
    let body = IndexBody::build(3, 5, 3, 9, 0, Vec::new(), entries.clone()).unwrap();
    assert!(body.slots.len() >= body.buckets as usize);
    assert_eq!(body.spans.len(), 3);
    let (_dir, index) = open_body(&body);
    let occupied: Vec<Slot> = index.slots().collect();
    assert_eq!(occupied.len(), hashes.len());
    assert!(
        occupied.is_sorted_by_key(|s| s.hash),
        "table is not ordered by hash"
    );
    for (i, &h) in hashes.iter().enumerate() {
        let found = index.probe(h, |s| (s == entries[i]).then_some(()));
        assert!(found.is_some(), "entry {i} (hash {h:x}) not found");
    }
    // Absent hashes: no slot shares their top 28 bits, so no candidate at all.
    for h in [
        1u64 << 36,
        2 << 36,
        u64::MAX - (200 << 36),
        hashes[10] ^ (1 << 40),
    ] {
        if !hashes.iter().any(|&x| slot_hash(x) == slot_hash(h)) {
            assert!(index.probe(h, |_| Some(())).is_none(), "{h:x} found");
        }
    }
    let mut seen = 0;
    index.probe(hashes[10], |_| {
        seen += 1;
        None::<()>
    });
    assert_eq!(seen, 3);
}

#[test]
fn a_full_index_has_a_filter_that_answers_misses() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hashes: Vec<u64> = (0..20_000).map(|_| next()).collect();
    let entries: Vec<Slot> = (0..hashes.len())
        .map(|i| slot(hashes[i], i as u32))
        .collect();
    let body = IndexBody::build(3, 5, 3, 9, 0, Vec::new(), entries).unwrap();
    let (dir, index) = open_body(&body);
    assert!(index.has_filter() && index.verify_checksum() && index.filter_intact());
    assert!(hashes.iter().all(|&h| index.may_hold(h)));
    let absent: Vec<u64> = (0..20_000).map(|_| next()).collect();
    let passed = absent.iter().filter(|&&h| index.may_hold(h)).count();
    assert!(
        passed < absent.len() / 20,
        "{passed} of 20000 absent hashes passed"
    );

    // A recent index has none: its misses go on to the full index anyway.
    let entries = vec![slot(hashes[0], 0)];
    let recent = IndexBody::build(4, 5, 3, 9, 0, Vec::new(), entries).unwrap();
    let (_d, recent) = open_body(&recent.over(3, 1, 0));
    assert!(!recent.has_filter() && recent.may_hold(absent[0]));

    // A damaged filter fails the checksum; a damaged footer, the open.
    let path = dir.path().join("i.tki");
    let good = std::fs::read(&path).unwrap();
    let n = good.len();
    let mut bad = good.clone();
    bad[n - FOOTER_LEN - 100] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let damaged = Index::open(&path, 3, 5).unwrap();
    assert!(damaged.verify_checksum() && !damaged.filter_intact());
    for at in [n - 1, n - FOOTER_LEN] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        let err = Index::open(&path, 3, 5).unwrap_err();
        assert!(err.to_string().contains("filter"), "{err}");
    }
    // A file cut after its archive reads as a version 6 file would, but says version 7.
    std::fs::write(&path, &good[..HEADER_LEN + index.archive_len]).unwrap();
    assert!(Index::open(&path, 3, 5).is_err());
}

#[test]
fn locations_past_the_limit_are_an_error() {
    let at = |seg, off| Slot { hash: 1, seg, off };
    // 4 GiB segments: 64 of them fill the 256 GiB of locations.
    let last = u32::MAX - 3;
    let fits: Vec<Slot> = (0..63).map(|seg| at(seg, last)).collect();
    assert!(IndexBody::build(1, 1, 1, 0, 0, Vec::new(), fits.clone()).is_ok());
    let over: Vec<Slot> = fits.into_iter().chain([at(200, last)]).collect();
    let err = IndexBody::build(1, 1, 1, 0, 0, Vec::new(), over).unwrap_err();
    assert!(err.to_string().contains("256 GiB"), "{err}");
}
