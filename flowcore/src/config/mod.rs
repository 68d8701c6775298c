//! Configuration values parsed at the edge into typed form (being written).
