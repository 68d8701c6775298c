//! Deterministic cluster simulator driving the flowcore state machines in virtual time.
