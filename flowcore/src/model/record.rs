//! Flow records (being written).
