//! String interning for the aggregator's in-flight flows: Pod, Namespace, Node, Service and
//! policy names repeat across thousands of flows, so each flow stores 4-byte symbols and the text
//! lives once. Output records carry `Arc<str>` clones, so emitting a record allocates nothing.

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
}

/// Interned strings. Grows with the number of distinct names seen; names are few compared with
/// flows (Pods come and go, but each name is a few dozen bytes once).
#[derive(Debug)]
pub struct Interner {
    strings: Vec<Arc<str>>,
    index: HashMap<Arc<str>, Sym>,
}

impl Default for Interner {
    fn default() -> Self {
        let empty: Arc<str> = Arc::from("");
        Interner {
            strings: vec![empty.clone()],
            index: HashMap::from([(empty, Sym::EMPTY)]),
        }
    }
}

impl Interner {
    /// The symbol for `s`, adding it if new. Allocates only for a string never seen before.
    pub fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.index.get(s) {
            return sym;
        }
        let arc: Arc<str> = Arc::from(s);
        let sym = Sym(self.strings.len() as u32);
        self.strings.push(arc.clone());
        self.index.insert(arc, sym);
        sym
    }

    /// Interns UTF-8 bytes from the wire (invalid sequences replaced).
    pub fn intern_bytes(&mut self, b: &[u8]) -> Sym {
        match std::str::from_utf8(b) {
            Ok(s) => self.intern(s),
            Err(_) => self.intern(&String::from_utf8_lossy(b)),
        }
    }

    pub fn get(&self, sym: Sym) -> &Arc<str> {
        // Symbols are only made by this interner, so the index is always in range.
        &self.strings[sym.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.len() <= 1
    }
}
