//! Information-element registry (filled in below).
