//! String interning for the aggregator's in-flight flows: Pod, Namespace, Node, Service and
//! policy names repeat across thousands of flows, so each flow stores 4-byte symbols and the text
//! lives once. Output records carry `Arc<str>` clones, so emitting a record allocates nothing.
//!
//! The names come off the wire from any exporter, so the table is bounded and reclaimed:
//! - a name longer than Kubernetes allows for its field is refused, never interned
//!   ([`Interner::intern_wire`]'s `max_len`);
//! - every name is reference-counted by the metadata entries ([`MetaTable`]) that use it, and
//!   freed with its last user — at [`Interner::sweep`], never while a record is being applied
//!   (a half in hand may hold a handle whose last other user just went);
//! - the live names' bytes are bounded by `max_bytes`, charged to the exporter whose record
//!   brought each name. When the table is over the bound, a new name is refused only for an
//!   exporter over its fair share (the bound over the exporters holding names); one under it may
//!   still add names, so one exporter's flood never costs the others their names, and the total
//!   stays under twice the bound. The aggregator then evicts the heaviest exporter's flows to get
//!   back under it ([`Interner::heaviest`]).
//!
//! The table is flowcore's one interner, [`crate::model::Interner`]; this is a view of it with
//! the aggregator's symbol convention (`Sym::EMPTY` = 0 is the empty string, so `FlowMeta`
//! defaults to "nothing known").

use std::hash::BuildHasher;
use std::sync::Arc;

/// A handle to an interned string. `Sym::EMPTY` is the empty string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

impl Sym {
    pub const EMPTY: Sym = Sym(0);

    pub fn is_empty(self) -> bool {
        self == Sym::EMPTY
    }

    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }

    fn model(self) -> crate::model::Sym {
        // The empty string is the table's first entry (model symbol 1).
        crate::model::Sym::from_index(self.0 as usize)
    }

    fn of(s: crate::model::Sym) -> Sym {
        Sym(s.index() as u32)
    }
}

/// The exporter index of names the aggregator brings itself (cluster id, its own metadata):
/// never charged, never refused.
pub(crate) const NO_OWNER: u16 = u16::MAX;

/// References that never go (the empty string, pinned names).
const PINNED: u32 = u32::MAX;

/// Heap bytes a name costs besides its text: the `Arc` header (16), the table slot (16), the
/// hash index entry (~8 with its control byte and load factor), its reference count and owner
/// (6), and the allocator's rounding (~16). Charged with the text, so a flood of short names is
/// bounded as surely as one of long names.
pub const NAME_OVERHEAD: usize = 64;

fn cost(len: usize) -> usize {
    len + NAME_OVERHEAD
}

/// Why a name from the wire was not interned (the field is then treated as absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRefusal {
    /// Longer than Kubernetes allows for the field.
    TooLong,
    /// The name table is over its byte bound and the exporter over its fair share.
    OverBudget,
}

/// Interned strings: [`crate::model::Interner`] with the empty string as symbol 0, reference
/// counts, and a byte bound charged per exporter.
pub struct Interner {
    inner: crate::model::Interner,
    /// Per handle: references held (`PINNED` for names that never go).
    refs: Vec<u32>,
    /// Per handle: the exporter charged for its bytes.
    owner: Vec<u16>,
    /// Per exporter index: bytes of the live names it is charged for.
    charges: Vec<u64>,
    /// Exporters with a non-zero charge (the fair share divides the bound among them).
    charged: usize,
    /// Handles that may have no reference left (new and not yet used, or released to zero);
    /// `sweep` frees those still unreferenced.
    zero: Vec<Sym>,
    /// Heap bytes of the live names (text and [`NAME_OVERHEAD`] each).
    bytes: usize,
    max_bytes: usize,
    /// A name was refused for the budget since the last relief.
    pressure: bool,
    empty: Arc<str>,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Default for Interner {
    /// Unbounded (tests, tools); the aggregator sets its bound with [`Interner::with_max_bytes`].
    fn default() -> Self {
        Interner::with_max_bytes(usize::MAX)
    }
}

impl Interner {
    pub fn with_max_bytes(max_bytes: usize) -> Self {
        let mut inner = crate::model::Interner::new();
        let empty = inner.intern("");
        debug_assert_eq!(Sym::of(empty), Sym::EMPTY);
        Interner {
            inner,
            refs: vec![PINNED],
            owner: vec![NO_OWNER],
            charges: Vec::new(),
            charged: 0,
            zero: Vec::new(),
            bytes: 0,
            max_bytes,
            pressure: false,
            empty: Arc::from(""),
        }
    }

    /// The symbol for `s`, adding it if new, uncharged and never refused: for names the
    /// aggregator brings itself. Unless something takes a reference ([`Interner::acquire`]),
    /// it goes at the next [`Interner::sweep`].
    pub fn intern(&mut self, s: &str) -> Sym {
        if s.is_empty() {
            return Sym::EMPTY;
        }
        if let Some(sym) = self.inner.get(s) {
            return Sym::of(sym);
        }
        let sym = Sym::of(self.inner.intern(s));
        self.track_new(sym, NO_OWNER, s.len());
        sym
    }

    /// Interns UTF-8 bytes an exporter sent (invalid sequences replaced), charged to exporter
    /// `owner`. A name seen before is found by hash and byte comparison, without UTF-8 validation
    /// or allocation; a new one is refused when longer than `max_len` or over the budget (module
    /// docs).
    #[inline]
    pub fn intern_wire(
        &mut self,
        b: &[u8],
        owner: u16,
        max_len: usize,
    ) -> Result<Sym, NameRefusal> {
        if b.is_empty() {
            return Ok(Sym::EMPTY);
        }
        if b.len() > max_len {
            return Err(NameRefusal::TooLong);
        }
        match self.inner.get_bytes(b) {
            Some(sym) => Ok(Sym::of(sym)),
            None => self.intern_new(b, owner),
        }
    }

    #[cold]
    fn intern_new(&mut self, b: &[u8], owner: u16) -> Result<Sym, NameRefusal> {
        let len = cost(b.len());
        if self.bytes + len > self.max_bytes && owner != NO_OWNER {
            let charge = self.charges.get(owner as usize).copied().unwrap_or(0);
            let holders = self.charged + usize::from(charge == 0);
            let fair = self.max_bytes / holders.max(1);
            if charge as usize + len > fair {
                self.pressure = true;
                return Err(NameRefusal::OverBudget);
            }
        }
        let sym = Sym::of(self.inner.intern_bytes(b));
        let stored = self.inner.resolve(sym.model()).len();
        self.track_new(sym, owner, stored);
        Ok(sym)
    }

    fn track_new(&mut self, sym: Sym, owner: u16, len: usize) {
        let i = sym.index();
        if self.refs.len() <= i {
            self.refs.resize(i + 1, 0);
            self.owner.resize(i + 1, NO_OWNER);
        }
        self.refs[i] = 0;
        self.owner[i] = owner;
        let len = cost(len);
        self.bytes += len;
        if owner != NO_OWNER {
            let o = owner as usize;
            if self.charges.len() <= o {
                self.charges.resize(o + 1, 0);
            }
            if self.charges[o] == 0 {
                self.charged += 1;
            }
            self.charges[o] += len as u64;
        }
        self.zero.push(sym);
    }

    /// A new reference to `sym`.
    pub(crate) fn acquire(&mut self, sym: Sym) {
        if let Some(r) = self.refs.get_mut(sym.index())
            && *r != PINNED
        {
            *r += 1;
        }
    }

    /// Drops a reference; the name goes at the next sweep unless it gets another one first.
    pub(crate) fn release(&mut self, sym: Sym) {
        if let Some(r) = self.refs.get_mut(sym.index())
            && *r != PINNED
        {
            debug_assert!(*r > 0, "released more often than acquired");
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.zero.push(sym);
            }
        }
    }

    /// Keeps `sym` for the interner's lifetime.
    pub(crate) fn pin(&mut self, sym: Sym) {
        if let Some(r) = self.refs.get_mut(sym.index()) {
            *r = PINNED;
        }
    }

    /// [`Self::sweep`] once enough names may be unreferenced: freeing is batched, so a name that
    /// recurs in records but is never kept (a field the merge ignores) is not freed and
    /// interned again for every record. Unreferenced names still count against the bound, and
    /// the aggregator sweeps before it evicts anything for names, and every few seconds.
    pub(crate) fn maybe_sweep(&mut self) {
        if self.zero.len() >= 4096 {
            self.sweep();
        }
    }

    /// Frees every name nobody references. Call between records, never while a record's
    /// symbols are in hand.
    pub(crate) fn sweep(&mut self) {
        while let Some(sym) = self.zero.pop() {
            let i = sym.index();
            if self.refs.get(i) != Some(&0) {
                continue;
            }
            let freed = self.inner.remove(sym.model());
            if freed == 0 {
                // Listed twice; already freed.
                continue;
            }
            let freed = cost(freed);
            self.bytes -= freed;
            self.refs[i] = 0;
            let o = std::mem::replace(&mut self.owner[i], NO_OWNER);
            if let Some(c) = self.charges.get_mut(o as usize) {
                *c -= freed as u64;
                if *c == 0 {
                    self.charged -= 1;
                }
            }
        }
    }

    pub fn get(&self, sym: Sym) -> &Arc<str> {
        // Symbols are only made by this interner and freed once unreferenced, so a live handle
        // always resolves; a bug elsewhere shows an empty name rather than a crash.
        self.inner
            .resolve_shared(sym.model())
            .unwrap_or(&self.empty)
    }

    /// Live names (the empty string included).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len() <= 1
    }

    /// Heap bytes of the live names: text and [`NAME_OVERHEAD`] each.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Over the byte bound, or a name was refused for it: the aggregator should evict the
    /// heaviest exporter's flows until [`Interner::relieved`].
    pub(crate) fn needs_relief(&self) -> bool {
        self.pressure || self.bytes > self.max_bytes
    }

    /// Relief found nothing more to evict: wait for the next refusal before trying again.
    pub(crate) fn give_up_relief(&mut self) {
        self.pressure = false;
    }

    /// Back under the bound with room for new names (1/16 of it), so relief does not run again
    /// at the next record.
    pub(crate) fn relieved(&mut self) -> bool {
        let done = self.bytes <= self.max_bytes - self.max_bytes / 16;
        if done {
            self.pressure = false;
        }
        done
    }

    /// Releases spare capacity of the index after a flood has gone (the slot table keeps its
    /// length: handles index it).
    pub(crate) fn shrink(&mut self) {
        self.inner.shrink();
        self.zero.shrink_to_fit();
    }

    /// The exporter charged for the most name bytes, if any is charged.
    pub(crate) fn heaviest(&self) -> Option<u16> {
        let (i, c) = self.charges.iter().enumerate().max_by_key(|&(_, c)| *c)?;
        (*c > 0).then_some(i as u16)
    }

    /// Bytes charged to exporter `owner`.
    pub fn charge(&self, owner: u16) -> u64 {
        self.charges.get(owner as usize).copied().unwrap_or(0)
    }
}

/// Handle to a shared [`FlowMeta`](super::FlowMeta).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetaId(u32);

/// Reference-counted, deduplicated flow metadata. Many connections share one Pod pair, Service
/// and policy set, so a flow holds a 4-byte id instead of ~100 bytes of symbols; the entry goes
/// when its last flow does, and with it its references to the names. The entries live once, in
/// a slab found through a hash table of 4-byte ids (a map keyed by the entries would hold each
/// 88-byte entry twice): an attacker can make every flow's metadata distinct, so an entry's cost
/// counts as much as a flow's.
pub(crate) struct MetaTable {
    metas: Vec<super::FlowMeta>,
    refs: Vec<u32>,
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    /// Keyed with the aggregator's per-process seed: the names in it come off the wire.
    hasher: foldhash::fast::FixedState,
}

impl MetaTable {
    pub(crate) fn new(seed: u64) -> Self {
        MetaTable {
            metas: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    fn find(&self, m: &super::FlowMeta, h: u64) -> Option<u32> {
        let (metas, refs) = (&self.metas, &self.refs);
        self.index
            .find(h, |&i| refs[i as usize] > 0 && metas[i as usize] == *m)
            .copied()
    }

    /// A new reference to `m`.
    pub(crate) fn acquire(&mut self, m: super::FlowMeta, strings: &mut Interner) -> MetaId {
        let h = self.hasher.hash_one(m);
        if let Some(i) = self.find(&m, h) {
            self.refs[i as usize] += 1;
            return MetaId(i);
        }
        for s in m.syms() {
            strings.acquire(s);
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.metas[i as usize] = m;
                self.refs[i as usize] = 1;
                i
            }
            None => {
                self.metas.push(m);
                self.refs.push(1);
                (self.metas.len() - 1) as u32
            }
        };
        let (metas, hasher) = (&self.metas, &self.hasher);
        self.index
            .insert_unique(h, i, |&x| hasher.hash_one(metas[x as usize]));
        MetaId(i)
    }

    /// Drops a reference; the entry is freed with the last one.
    pub(crate) fn release(&mut self, id: MetaId, strings: &mut Interner) {
        let r = &mut self.refs[id.0 as usize];
        *r -= 1;
        if *r == 0 {
            let m = self.metas[id.0 as usize];
            let h = self.hasher.hash_one(m);
            if let Ok(e) = self.index.find_entry(h, |&x| x == id.0) {
                e.remove();
            }
            for s in m.syms() {
                strings.release(s);
            }
            self.free.push(id.0);
        }
    }

    pub(crate) fn get(&self, id: MetaId) -> &super::FlowMeta {
        &self.metas[id.0 as usize]
    }

    /// Replaces what `id` refers to by `m` (a no-op when equal).
    pub(crate) fn update(&mut self, id: &mut MetaId, m: super::FlowMeta, strings: &mut Interner) {
        if *self.get(*id) != m {
            let new = self.acquire(m, strings);
            self.release(*id, strings);
            *id = new;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// When the table holds four times what `users` (flows and tombstones) can reference,
    /// renumbers the live entries densely and returns the mapping from old ids to new.
    pub(crate) fn compact(&mut self, users: usize) -> Option<impl Fn(MetaId) -> MetaId + use<>> {
        let live = self.index.len();
        if self.metas.len() <= 4 * users.max(live) + 4096 {
            return None;
        }
        let mut remap = vec![u32::MAX; self.metas.len()];
        let mut metas = Vec::with_capacity(live);
        let mut refs = Vec::with_capacity(live);
        for (i, (m, r)) in self.metas.iter().zip(&self.refs).enumerate() {
            if *r > 0 {
                remap[i] = metas.len() as u32;
                metas.push(*m);
                refs.push(*r);
            }
        }
        self.metas = metas;
        self.refs = refs;
        self.free = Vec::new();
        let (metas, hasher) = (&self.metas, &self.hasher);
        let mut index = hashbrown::HashTable::with_capacity(live);
        for i in 0..metas.len() as u32 {
            index.insert_unique(hasher.hash_one(metas[i as usize]), i, |&x| {
                hasher.hash_one(metas[x as usize])
            });
        }
        self.index = index;
        Some(move |id: MetaId| MetaId(remap[id.0 as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_with_their_last_reference_at_the_sweep() {
        let mut s = Interner::with_max_bytes(1 << 20);
        let a = s.intern_wire(b"frontend-1", 0, 253).unwrap();
        s.acquire(a);
        let b = s.intern_wire(b"unused", 0, 253).unwrap();
        s.sweep();
        assert_eq!(&**s.get(a), "frontend-1");
        assert_eq!(s.charge(0), 10 + 64, "the unused name went at the sweep");
        assert_eq!(
            &**s.get(b),
            "",
            "a freed handle resolves empty, never panics"
        );
        s.release(a);
        s.acquire(a);
        s.sweep();
        assert_eq!(
            &**s.get(a),
            "frontend-1",
            "re-acquired before the sweep: kept"
        );
        s.release(a);
        s.sweep();
        assert_eq!((s.len(), s.bytes(), s.charge(0)), (1, 0, 0));
    }

    #[test]
    fn too_long_names_are_refused_and_never_stored() {
        let mut s = Interner::default();
        let long = vec![b'a'; 64];
        assert_eq!(s.intern_wire(&long, 0, 63), Err(NameRefusal::TooLong));
        assert_eq!(s.bytes(), 0);
        assert!(s.intern_wire(&long[..63], 0, 63).is_ok());
    }

    #[test]
    fn over_the_bound_only_the_exporter_over_its_fair_share_is_refused() {
        // Ten names of 10 bytes, each costing 74.
        let mut s = Interner::with_max_bytes(740);
        let mut held = Vec::new();
        // Exporter 0 fills the table.
        for i in 0..10 {
            let sym = s.intern_wire(format!("flood-{i:04}").as_bytes(), 0, 253);
            held.push(sym.unwrap());
        }
        for &h in &held {
            s.acquire(h);
        }
        assert_eq!(s.bytes(), 740);
        assert_eq!(
            s.intern_wire(b"flood-more", 0, 253),
            Err(NameRefusal::OverBudget)
        );
        // Exporter 1 holds nothing: its fair share is half the bound (370: five names of 73).
        for i in 0..5 {
            let n = format!("pod-{i:05}");
            assert!(s.intern_wire(n.as_bytes(), 1, 253).is_ok(), "{n}");
        }
        assert_eq!(
            s.intern_wire(b"pod-99999", 1, 253),
            Err(NameRefusal::OverBudget)
        );
        assert!(s.needs_relief());
        assert_eq!(s.heaviest(), Some(0));
        // Known names are always found.
        assert_eq!(s.intern_wire(b"flood-0003", 1, 253), Ok(held[3]));
    }
}
