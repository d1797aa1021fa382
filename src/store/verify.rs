//! `verify`: every file of the cache checked, for the CLI and the tests.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;

use super::{Store, View};
use crate::index::{self, Index};
use crate::map::ReadMap;
use crate::record::Kind;
use crate::segment;

/// What [`Cache::verify`](crate::Cache::verify) found.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// let cache = tokcache::Cache::open(dir.path())?;
/// cache.set("test", "k", &1)?;
/// cache.compact()?;
/// let report = cache.verify(|_| {});
/// assert!(report.is_sound() && report.litter.is_empty());
/// assert_eq!((report.records_checked, report.slots_checked), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records read and checked, in every segment.
    pub records_checked: u64,
    /// Index slots checked against their records.
    pub slots_checked: u64,
    /// Each problem, in words; empty when the cache is sound.
    pub problems: Vec<String>,
    /// Files that no generation names, left by a process that died in the middle of writing
    /// them (a compaction, a clear, a rebuild): not damage, only space, which the next
    /// compaction gives back.
    pub litter: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged (litter may be there: see [`VerifyReport::litter`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let cache = tokcache::Cache::open(dir.path())?;
    /// cache.set("test", "k", &1)?;
    /// cache.flush()?;
    /// assert!(cache.verify(|_| {}).is_sound());
    /// // A damaged segment is a problem; the cache itself goes on from what is intact.
    /// let seg = std::fs::read_dir(dir.path())?
    ///     .map(|e| e.unwrap().path())
    ///     .find(|p| p.extension().is_some_and(|x| x == "tks"))
    ///     .unwrap();
    /// let mut bytes = std::fs::read(&seg)?;
    /// bytes[40] ^= 0xff;
    /// std::fs::write(&seg, bytes)?;
    /// assert!(!tokcache::Cache::open(dir.path())?.verify(|_| {}).is_sound());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Checks every file: the index checksum, each slot against its record, every record of
    /// every segment (checksums and key hashes), and files that nothing refers to. Waits for a
    /// compaction under way (in any process) and holds others off meanwhile, so that the files
    /// of one in flight are not taken for leftovers; then catches up with the current
    /// generation.
    pub(crate) fn verify(&self, mut progress: impl FnMut(u64)) -> VerifyReport {
        let mut report = VerifyReport::default();
        // A read-only directory has no compaction lock to take (and nobody compacts there).
        let _compaction = self.compaction_lock(true).ok().flatten();
        if let Err(e) = self.refresh() {
            report
                .problems
                .push(format!("cannot load the current generation: {e}"));
        }
        let v = self.view.read();
        report.problems.extend(v.prefixes.damage());
        let Some(index) = v.index.as_ref() else {
            report.problems.push("no index loaded".into());
            return report;
        };
        let live = self.verify_index(&v, index, &mut report);
        for info in &v.infos {
            let found = live.get(&info.id).copied().unwrap_or(0);
            if found != info.live {
                report.problems.push(format!(
                    "{}: the index counts {} live bytes in it, its entries take {found}",
                    segment::segment_name(info.id),
                    info.live
                ));
            }
        }
        if let Some(recent) = &v.recent {
            self.verify_index(&v, recent, &mut report);
        }
        let mut all: Vec<(u32, &Arc<ReadMap>, u64)> = v
            .infos
            .iter()
            .filter_map(|i| Some((i.id, v.segments.get(i.id)?, i.len)))
            .collect();
        all.push((v.active, v.log.map(), v.seen_committed));
        for (id, map, len) in all {
            if (map.bytes().len() as u64) < len {
                report.problems.push(format!(
                    "{}: shorter ({} bytes) than the {len} bytes the cache refers to",
                    segment::segment_name(id),
                    map.bytes().len()
                ));
            }
            let valid = &map.bytes()[..usize::try_from(len)
                .unwrap_or(usize::MAX)
                .min(map.bytes().len())];
            let (stop, why) = segment::scan(valid, 0, &v.prefixes, |off, rec| {
                report.records_checked += 1;
                let ok = self.hash_of(rec) == Some(rec.key_hash);
                if rec.prefix.is_empty() {
                    report.problems.push(format!(
                        "{} offset {off}: prefix number {} is not in {}",
                        segment::segment_name(id),
                        rec.prefix_id.unwrap_or_default(),
                        crate::prefixes::FILE_NAME
                    ));
                } else if !ok {
                    report.problems.push(format!(
                        "{}: a record's key does not match its hash",
                        segment::segment_name(id)
                    ));
                }
                if report.records_checked % 65536 == 0 {
                    progress(report.records_checked);
                }
            });
            if let Some(why) = why {
                report.problems.push(format!(
                    "{} offset {stop}: {why}",
                    segment::segment_name(id)
                ));
            }
        }
        let referenced: HashSet<u32> = v.infos.iter().map(|i| i.id).chain([v.active]).collect();
        if let Ok(entries) = fs::read_dir(&self.dir.path) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let orphan = match (
                    segment::parse_segment_name(&name),
                    index::parse_index_name(&name),
                ) {
                    (Some(id), _) => !referenced.contains(&id),
                    (_, Some(g)) => !v.index_generations().contains(&g),
                    _ => crate::files::is_new_file(&name) || crate::files::is_staged(&name),
                };
                if orphan {
                    report.litter.push(format!(
                        "{name}: named by no generation (left by an interrupted writer; the next \
                         compaction removes it)"
                    ));
                }
            }
        }
        report
    }

    /// The index's checksum, and each slot against its record. Returns the bytes of the live
    /// records the slots point at, per segment.
    fn verify_index(
        &self,
        v: &View,
        index: &Index,
        report: &mut VerifyReport,
    ) -> HashMap<u32, u64> {
        let mut live = HashMap::new();
        if !index.verify_checksum() {
            report.problems.push(format!(
                "{}: archive checksum mismatch",
                index.path.display()
            ));
        }
        if !index.filter_intact() {
            report.problems.push(format!(
                "{}: filter checksum mismatch (the next full compaction rebuilds it)",
                index.path.display()
            ));
        }
        for s in index.slots() {
            report.slots_checked += 1;
            let (seg, off, hash) = (s.seg, s.off, s.hash);
            let problem = match v.record(seg, off) {
                None => Some("points at no valid record".to_string()),
                Some((_, rec)) => {
                    if rec.kind != Kind::Tombstone {
                        *live.entry(seg).or_default() += rec.len as u64;
                    }
                    (index::slot_hash(rec.key_hash) != hash
                        || self.hash_of(&rec) != Some(rec.key_hash))
                    .then(|| "disagrees with its record's key hash".to_string())
                }
            };
            // The filter must hold every slot's hash, or lookups of that key would stop at it.
            let unfiltered = (!index.may_hold(index::lowest_hash(hash)))
                .then(|| "its hash is missing from the index's filter".to_string());
            for p in problem.into_iter().chain(unfiltered) {
                report
                    .problems
                    .push(format!("index slot -> segment {seg} offset {off}: {p}"));
            }
        }
        live
    }
}
