//! What retention deletes from the SQLite store, and how it stays fair between exporters.
//!
//! - By age: every record and rollup row of the minutes before `now - max_age`.
//! - By size, while the data is over `max_bytes`, in at most [`SIZE_ROUNDS`] rounds, each
//!   sized to the excess (its share of the store, as a share of the records):
//!   - when exporters hold unequal numbers of records, the ones holding the most lose their
//!     oldest records down to a common level ("water filling", [`level_cuts`]): an exporter
//!     holding no more than that level loses nothing, so one exporter's flood costs its own
//!     history first. Oldest is in the order received (`flows.id`), which the peer cannot
//!     forge as it can end times. Rollups carry no exporter and are left to age, so they keep
//!     the sums of records deleted this way. Exporters' records share pages (they arrive
//!     interleaved), and a page is freed only once it empties or SQLite merges it (under about
//!     a third full): a fair cut takes more records than the same bytes by minute would (about
//!     1.3× with two exporters at 1:2 in the store bench), which the next round's measure of
//!     the size accounts for;
//!   - when all hold the same (one exporter — the usual case — or after the largest were cut
//!     to the others' level) or no record is left, the oldest minutes of everything go,
//!     records and rollups, as they always did.
//! - Names: `dict` rows that no record or rollup row refers to any more, once `dict` has
//!   doubled since the last prune (see [`prune_due`]). Finding them reads the whole store, so
//!   it runs on a read snapshot of its own while inserts go on ([`unreferenced_names`]), and
//!   only the deletion takes the writer (see `insert::Dict` for why that is safe).
//!
//! Invariants: `exporters` holds, per exporter, exactly the number of its rows in `flows`
//! (every delete here counts what it removed per exporter in the same transaction), and
//! `meta.records` their sum.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::codec;
use super::insert::FxSet;
use super::schema::{self, HOURLY, ROLLUPS};
use crate::collector::query::RetentionReason;

/// Size rounds per pass: a large excess (or pages that deleting interleaved records leaves
/// part full) takes a few; what is left waits for the next pass.
pub const SIZE_ROUNDS: usize = 16;

/// Records deleted per statement where each one's exporter is read back (`RETURNING` holds a
/// statement's rows in memory until it ends).
const DELETE_CHUNK: i64 = 65_536;

/// `dict` is not pruned below this many rows: small stores gain nothing worth a scan.
pub const PRUNE_MIN_NAMES: u64 = 4096;

/// An exporter's row of `exporters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// `dict` id of its address; 0 the unknown exporter.
    pub id: i64,
    pub records: u64,
    /// Its records all have `flows.id` at or above this.
    pub low_id: i64,
}

/// What one pass deleted.
#[derive(Debug, Default)]
pub struct Tally {
    /// Records by reason and exporter id.
    pub records: HashMap<(RetentionReason, i64), u64>,
    pub rollup_rows: u64,
    /// Every minute before this is gone.
    pub cutoff: u64,
    /// Records size retention took from exporters holding no more than an even share while
    /// others held records too: a flood cut fairly never lands here.
    pub within_share: HashMap<i64, u64>,
}

impl Tally {
    pub fn deleted_records(&self) -> u64 {
        self.records.values().sum()
    }
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Bytes of the database file in use (pages not on the free list).
pub fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
    let q = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
    let used = q("page_count")? - q("freelist_count")?;
    Ok((used.max(0) as u64) * q("page_size")?.max(0) as u64)
}

/// Every exporter holding records, the most first (ties by id).
pub fn held(c: &Connection) -> rusqlite::Result<Vec<Held>> {
    let mut st = c.prepare_cached(
        "SELECT id, records, low_id FROM exporters WHERE records > 0 ORDER BY records DESC, id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(Held {
            id: r.get(0)?,
            records: r.get::<_, i64>(1)?.max(0) as u64,
            low_id: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Takes `gone` (records deleted per exporter) off `exporters` and `meta.records`.
fn uncount(tx: &Transaction<'_>, gone: &HashMap<i64, u64>) -> rusqlite::Result<()> {
    let mut total = 0;
    let mut st = tx.prepare_cached("UPDATE exporters SET records = records - ?2 WHERE id = ?1")?;
    for (&id, &n) in gone {
        st.execute([id, i(n)])?;
        total += n;
    }
    tx.prepare_cached("DELETE FROM exporters WHERE records <= 0")?
        .execute([])?;
    tx.prepare_cached("UPDATE meta SET value = value - ?1 WHERE key = 'records'")?
        .execute([i(total)])?;
    Ok(())
}

/// Deletes every record and rollup row before `cutoff` (a minute boundary), in one
/// transaction. Returns the records deleted per exporter.
pub fn delete_before(
    c: &mut Connection,
    cutoff: u64,
    reason: RetentionReason,
    tally: &mut Tally,
) -> rusqlite::Result<HashMap<i64, u64>> {
    let tx = c.transaction()?;
    let cut = i(cutoff);
    let held = held(&tx)?;
    let mut gone: HashMap<i64, u64> = HashMap::new();
    if held.len() <= 1 {
        // One exporter (the usual case): whatever goes is its.
        let n = tx.execute("DELETE FROM flows WHERE end_secs < ?1", [cut])? as u64;
        if n > 0 {
            gone.insert(held.first().map_or(0, |h| h.id), n);
        }
    } else {
        let mut st = tx.prepare_cached(
            "DELETE FROM flows WHERE id IN \
             (SELECT id FROM flows WHERE end_secs < ?1 LIMIT ?2) RETURNING exporter",
        )?;
        loop {
            let mut rows = st.query([cut, DELETE_CHUNK])?;
            let mut n = 0;
            while let Some(r) = rows.next()? {
                *gone.entry(r.get(0)?).or_default() += 1;
                n += 1;
            }
            if n < DELETE_CHUNK {
                break;
            }
        }
    }
    let mut rollup = 0;
    for (t, _) in ROLLUPS {
        rollup += tx.execute(&format!("DELETE FROM {t} WHERE minute < ?1"), [cut])? as u64;
        // An hour row goes once its whole hour is before the cutoff; the hour holding the
        // cutoff keeps its sums until then (queries read it only for whole hours).
        rollup += tx.execute(
            &format!("DELETE FROM {t}{HOURLY} WHERE minute + 3600 <= ?1"),
            [cut],
        )? as u64;
    }
    uncount(&tx, &gone)?;
    tx.commit()?;
    for (&e, &n) in &gone {
        *tally.records.entry((reason, e)).or_default() += n;
    }
    tally.rollup_rows += rollup;
    if !gone.is_empty() || rollup > 0 {
        tally.cutoff = tally.cutoff.max(cutoff);
    }
    Ok(gone)
}

/// How many records each of the exporters holding the most gives up so that `want` go in
/// all, leaving each of them at one common level, never below what the smallest holds: pairs
/// of (index into `held`, records). `held` is sorted the most first. `None` when all hold
/// the same, so there is nothing to even out.
pub fn level_cuts(held: &[Held], want: u64) -> Option<Vec<(usize, u64)>> {
    let floor = held.last()?.records;
    let above: u64 = held.iter().map(|h| h.records - floor).sum();
    if above == 0 {
        return None;
    }
    let want = want.clamp(1, above);
    let mut prefix = 0u64;
    for (j, h) in held.iter().enumerate() {
        prefix += h.records;
        let next = held.get(j + 1).map_or(floor, |h| h.records);
        let k = j as u64 + 1;
        // Levelling the first k down to the next one's count frees this much.
        if prefix - k * next >= want {
            let level = (prefix - want) / k;
            return Some(
                held[..=j]
                    .iter()
                    .enumerate()
                    .map(|(n, h)| (n, h.records - level))
                    .filter(|&(_, d)| d > 0)
                    .collect(),
            );
        }
    }
    None
}

/// Deletes the `n` oldest records (by `flows.id`) of exporter `h`, walking up from its
/// `low_id`, and moves `low_id` past them. Returns how many went.
fn cut_oldest(tx: &Transaction<'_>, h: &Held, n: u64) -> rusqlite::Result<u64> {
    if n == 0 {
        return Ok(0);
    }
    let last: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM flows WHERE id >= ?1 AND exporter = ?2 ORDER BY id LIMIT 1 OFFSET ?3",
        )?
        .query_row([h.low_id, h.id, i(n - 1)], |r| r.get(0))
        .optional()?;
    let deleted = match last {
        Some(last) => {
            let d = tx
                .prepare_cached("DELETE FROM flows WHERE id >= ?1 AND id <= ?2 AND exporter = ?3")?
                .execute([h.low_id, last, h.id])?;
            tx.prepare_cached("UPDATE exporters SET low_id = ?2 WHERE id = ?1")?
                .execute([h.id, last.saturating_add(1)])?;
            d
        }
        // Fewer than n (the counts never let this happen): all of them.
        None => tx
            .prepare_cached("DELETE FROM flows WHERE id >= ?1 AND exporter = ?2")?
            .execute([h.low_id, h.id])?,
    };
    Ok(deleted as u64)
}

/// One size round that evens out exporters: `cuts` from [`level_cuts`], in one transaction.
fn cut_fairly(
    c: &mut Connection,
    held: &[Held],
    cuts: &[(usize, u64)],
    tally: &mut Tally,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    let mut gone = HashMap::new();
    for &(k, n) in cuts {
        let d = cut_oldest(&tx, &held[k], n)?;
        if d > 0 {
            gone.insert(held[k].id, d);
        }
    }
    uncount(&tx, &gone)?;
    tx.commit()?;
    let total: u64 = held.iter().map(|h| h.records).sum();
    let share = total / held.len().max(1) as u64;
    for (&id, &n) in &gone {
        *tally
            .records
            .entry((RetentionReason::Size, id))
            .or_default() += n;
        let had = held.iter().find(|h| h.id == id).map_or(0, |h| h.records);
        if held.len() > 1 && had <= share {
            *tally.within_share.entry(id).or_default() += n;
        }
    }
    Ok(())
}

/// Size retention (see the module's comment): rounds until the data fits in `max` bytes or
/// [`SIZE_ROUNDS`] have run.
pub fn by_size(c: &mut Connection, max: u64, tally: &mut Tally) -> rusqlite::Result<()> {
    for _ in 0..SIZE_ROUNDS {
        let used = used_bytes(c)?;
        if used <= max {
            break;
        }
        let held = held(c)?;
        let total: u64 = held.iter().map(|h| h.records).sum();
        let want = (total as u128 * (used - max) as u128).div_ceil(used as u128) as u64;
        if let Some(cuts) = level_cuts(&held, want) {
            cut_fairly(c, &held, &cuts, tally)?;
            continue;
        }
        // Even: the oldest share of the time span proportional to the excess (at least one
        // minute), so a large excess takes a few rounds, not one per minute.
        let (_, oldest, newest) = super::read::record_span(c)?;
        let cutoff = match (oldest, newest) {
            (Some(old), Some(new)) => {
                let span = new - old + 60;
                let share = (used - max) as f64 / used as f64;
                (old + ((span as f64 * share).ceil() as u64).max(60)).div_ceil(60) * 60
            }
            _ => {
                // Only rollups left: their oldest minute.
                let m: Option<i64> =
                    c.query_row("SELECT MIN(minute) FROM r_node_pair", [], |r| r.get(0))?;
                match m {
                    Some(m) => m.max(0) as u64 + 60,
                    None => break,
                }
            }
        };
        let gone = delete_before(c, cutoff, RetentionReason::Size, tally)?;
        if held.len() > 1 {
            for (id, n) in gone {
                *tally.within_share.entry(id).or_default() += n;
            }
        }
    }
    Ok(())
}

/// Whether `dict` (`names` rows now) has grown enough since the last prune to prune again:
/// twice what the last prune left, and at least [`PRUNE_MIN_NAMES`]. So a prune's cost — a
/// read of the whole store — comes at most once per doubling.
pub fn prune_due(c: &Connection, names: u64) -> rusqlite::Result<bool> {
    let after: Option<i64> = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'names_after_prune'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let after = after.unwrap_or(0).max(0) as u64;
    Ok(names >= (2 * after).max(PRUNE_MIN_NAMES))
}

pub fn name_count(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT COUNT(*) FROM dict", [], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

pub fn set_names_after_prune(c: &Connection, n: u64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('names_after_prune', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [i(n)],
    )?;
    Ok(())
}

/// Ids in use: a bitmap while ids are small (they are row ids, dense), a set beyond.
enum Marks {
    Bits(Vec<u64>),
    Set(FxSet<i64>),
}

/// Largest id kept in a bitmap (16 MiB of bits).
const MAX_BITMAP_ID: i64 = 1 << 27;

impl Marks {
    fn new(max_id: i64) -> Marks {
        if max_id <= MAX_BITMAP_ID {
            Marks::Bits(vec![0; (max_id.max(0) as usize >> 6) + 1])
        } else {
            Marks::Set(FxSet::default())
        }
    }

    fn mark(&mut self, id: i64) {
        match self {
            Marks::Bits(b) => {
                if let Some(w) = usize::try_from(id).ok().and_then(|i| b.get_mut(i >> 6)) {
                    *w |= 1 << (id & 63);
                }
            }
            Marks::Set(s) => {
                s.insert(id);
            }
        }
    }

    fn has(&self, id: i64) -> bool {
        match self {
            Marks::Bits(b) => usize::try_from(id)
                .ok()
                .and_then(|i| b.get(i >> 6))
                .is_some_and(|w| w & (1 << (id & 63)) != 0),
            Marks::Set(s) => s.contains(&id),
        }
    }
}

/// The ids of `dict` rows that no record, rollup row or exporter refers to, read in one
/// snapshot on `c` (a connection of its own: this reads the whole store). Never id 0.
pub fn unreferenced_names(c: &Connection) -> rusqlite::Result<Vec<i64>> {
    c.execute_batch("BEGIN")?;
    let out = scan(c);
    c.execute_batch("COMMIT")?;
    out
}

fn scan(c: &Connection) -> rusqlite::Result<Vec<i64>> {
    let max: i64 = c.query_row("SELECT COALESCE(MAX(id), 0) FROM dict", [], |r| r.get(0))?;
    let mut marks = Marks::new(max);
    // The name columns of `flows` (src_ns … eg_name), its exporter, and the names in `rest`.
    let names = &schema::FLOW_COLUMNS[7..18];
    debug_assert_eq!((names[0], names[10]), ("src_ns", "eg_name"));
    let mut st = c.prepare(&format!(
        "SELECT {}, exporter, rest FROM flows",
        names.join(", ")
    ))?;
    let rest_col = names.len() + 1;
    let mut rows = st.query([])?;
    while let Some(row) = rows.next()? {
        for k in 0..rest_col {
            marks.mark(row.get(k)?);
        }
        if let rusqlite::types::ValueRef::Blob(b) = row.get_ref(rest_col)? {
            let r = codec::decode(b).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    rest_col,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                )
            })?;
            for id in [
                r.ingress[1],
                r.egress[1],
                r.tcp_state,
                r.src_labels,
                r.dst_labels,
                r.cluster_id,
            ] {
                marks.mark(i(id));
            }
        }
    }
    drop(rows);
    drop(st);
    for (t, keys) in ROLLUPS {
        let cols: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !schema::NOT_NAMES.contains(k))
            .collect();
        for table in [t.to_string(), format!("{t}{HOURLY}")] {
            let mut st = c.prepare(&format!("SELECT {} FROM {table}", cols.join(", ")))?;
            let mut rows = st.query([])?;
            while let Some(row) = rows.next()? {
                for k in 0..cols.len() {
                    marks.mark(row.get(k)?);
                }
            }
        }
    }
    let mut st = c.prepare("SELECT id FROM exporters")?;
    let mut rows = st.query([])?;
    while let Some(row) = rows.next()? {
        marks.mark(row.get(0)?);
    }
    let mut st = c.prepare("SELECT id FROM dict WHERE id > 0")?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        if !marks.has(id) {
            out.push(id);
        }
    }
    Ok(out)
}

/// Deletes the `dict` rows `ids` except those in `keep` (handed out since marking began).
pub fn delete_names(c: &mut Connection, ids: &[i64], keep: &FxSet<i64>) -> rusqlite::Result<u64> {
    let tx = c.transaction()?;
    let mut n = 0;
    {
        let mut st = tx.prepare_cached("DELETE FROM dict WHERE id = ?1")?;
        for id in ids.iter().filter(|id| !keep.contains(id)) {
            n += st.execute([id])? as u64;
        }
    }
    tx.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(counts: &[u64]) -> Vec<Held> {
        counts
            .iter()
            .enumerate()
            .map(|(k, &records)| Held {
                id: k as i64 + 1,
                records,
                low_id: 0,
            })
            .collect()
    }

    #[test]
    fn level_cuts_take_from_the_largest_down_to_a_common_level() {
        // One flooder: it alone gives up what is wanted.
        assert_eq!(level_cuts(&h(&[1000, 10, 5]), 300), Some(vec![(0, 300)]));
        // More than it holds above the next: both largest level down together.
        assert_eq!(
            level_cuts(&h(&[1000, 400, 5]), 700),
            Some(vec![(0, 650), (1, 50)])
        );
        // Never below the smallest: the rest of the excess waits for an even round.
        assert_eq!(
            level_cuts(&h(&[100, 60, 50]), 10_000),
            Some(vec![(0, 50), (1, 10)])
        );
        // Even, or alone: nothing to even out.
        assert_eq!(level_cuts(&h(&[70, 70]), 10), None);
        assert_eq!(level_cuts(&h(&[70]), 10), None);
        assert_eq!(level_cuts(&[], 10), None);
        // At least one record goes.
        assert_eq!(level_cuts(&h(&[3, 2]), 0), Some(vec![(0, 1)]));
    }

    #[test]
    fn level_cuts_free_what_is_wanted_and_keep_the_order() {
        for counts in [
            vec![9u64, 9, 9, 1],
            vec![1000, 999, 998, 3, 2, 1],
            vec![50, 40, 30, 20, 10],
        ] {
            let held = h(&counts);
            let above: u64 = counts.iter().map(|c| c - counts[counts.len() - 1]).sum();
            for want in 1..=above {
                let cuts = level_cuts(&held, want).unwrap();
                let freed: u64 = cuts.iter().map(|c| c.1).sum();
                // At most one record per exporter more than wanted (the level is whole).
                assert!(
                    freed >= want && freed < want + cuts.len() as u64,
                    "{counts:?} {want}: {cuts:?}"
                );
                let mut after = counts.clone();
                for (k, d) in &cuts {
                    after[*k] -= d;
                }
                // Those cut end at one level, not below the smallest; nobody holding no more
                // than that level lost anything.
                let level = after[cuts[0].0];
                assert!(cuts.iter().all(|(k, _)| after[*k] == level));
                assert!(level >= counts[counts.len() - 1]);
                for (k, c) in counts.iter().enumerate() {
                    if !cuts.iter().any(|(j, _)| *j == k) {
                        assert!(*c <= level, "{counts:?} {want}: {cuts:?}");
                    }
                }
            }
        }
    }
}
