//! String interning for the aggregator's in-flight flows: Pod, Namespace, Node, Service and
//! policy names repeat across thousands of flows, so each flow stores 4-byte symbols and the text
//! lives once. Output records carry `Arc<str>` clones, so emitting a record allocates nothing.
//!
//! The table is flowcore's one interner, [`crate::model::Interner`]; this is a view of it with
//! the aggregator's symbol convention (`Sym::EMPTY` = 0 is the empty string, so `FlowMeta`
//! defaults to "nothing known").

use std::collections::HashMap;
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

/// Interned strings: [`crate::model::Interner`] with the empty string as symbol 0.
pub struct Interner {
    inner: crate::model::Interner,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Default for Interner {
    fn default() -> Self {
        let mut inner = crate::model::Interner::new();
        let empty = inner.intern("");
        debug_assert_eq!(Sym::of(empty), Sym::EMPTY);
        Interner { inner }
    }
}

impl Interner {
    /// The symbol for `s`, adding it if new. Allocates only for a string never seen before.
    pub fn intern(&mut self, s: &str) -> Sym {
        Sym::of(self.inner.intern(s))
    }

    /// Interns UTF-8 bytes from the wire (invalid sequences replaced). A name seen before is
    /// found by hash and byte comparison, without UTF-8 validation or allocation.
    pub fn intern_bytes(&mut self, b: &[u8]) -> Sym {
        if b.is_empty() {
            return Sym::EMPTY;
        }
        Sym::of(self.inner.intern_bytes(b))
    }

    pub fn get(&self, sym: Sym) -> &Arc<str> {
        // Symbols are only made by this interner, so the index is always in range.
        self.inner
            .resolve_shared(sym.model())
            .expect("symbols come from this interner")
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len() <= 1
    }
}

/// Handle to a shared [`FlowMeta`](super::FlowMeta).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MetaId(u32);

/// Reference-counted, deduplicated flow metadata. Many connections share one Pod pair, Service
/// and policy set, so a flow holds a 4-byte id instead of ~100 bytes of symbols; the entry goes
/// when its last flow does.
pub(crate) struct MetaTable {
    metas: Vec<super::FlowMeta>,
    refs: Vec<u32>,
    free: Vec<u32>,
    index: HashMap<super::FlowMeta, u32, foldhash::fast::FixedState>,
}

impl MetaTable {
    pub(crate) fn new(seed: u64) -> Self {
        MetaTable {
            metas: Vec::new(),
            refs: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed)),
        }
    }

    /// A new reference to `m`.
    pub(crate) fn acquire(&mut self, m: super::FlowMeta) -> MetaId {
        if let Some(&i) = self.index.get(&m) {
            self.refs[i as usize] += 1;
            return MetaId(i);
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
        self.index.insert(m, i);
        MetaId(i)
    }

    /// Drops a reference; the entry is freed with the last one.
    pub(crate) fn release(&mut self, id: MetaId) {
        let r = &mut self.refs[id.0 as usize];
        *r -= 1;
        if *r == 0 {
            self.index.remove(&self.metas[id.0 as usize]);
            self.free.push(id.0);
        }
    }

    pub(crate) fn get(&self, id: MetaId) -> &super::FlowMeta {
        &self.metas[id.0 as usize]
    }

    /// Replaces what `id` refers to by `m` (a no-op when equal).
    pub(crate) fn update(&mut self, id: &mut MetaId, m: super::FlowMeta) {
        if *self.get(*id) != m {
            let new = self.acquire(m);
            self.release(*id);
            *id = new;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}
