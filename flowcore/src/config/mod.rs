//! Configuration values parsed at the edge into typed form, so the core trusts them: Go-syntax
//! durations and Antrea-style collector addresses. Pure parsing — reading files and naming the
//! config key in errors is the bins' job; every error here names the input and the accepted form.

pub mod addr;
pub mod duration;

pub use addr::{
    COLLECTOR_ADDR_FORM, CollectorAddr, CollectorAddrError, CollectorAddrErrorReason, Host,
    TRANSPORT_FORM, Transport, TransportConflict, TransportError, parse_collector_addr,
};
pub use duration::{DURATION_FORM, Duration, DurationError, DurationErrorReason, parse_duration};
