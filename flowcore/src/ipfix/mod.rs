//! IPFIX codec.
