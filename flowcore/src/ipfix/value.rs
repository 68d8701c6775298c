//! Typed views of field bytes (RFC 7011 §6). Integers may arrive in reduced size (§6.2); the
//! `dateTimeMicro/Nanoseconds` types use NTP's format (§6.1.9/10): seconds since 1900 and a
//! binary fraction.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ie::DataType;

use super::template::FieldSpec;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A decoded field value, borrowing strings and octets from the message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Mac([u8; 6]),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// UTF-8 as the RFC requires; invalid bytes are kept and shown lossily.
    String(&'a [u8]),
    Octets(&'a [u8]),
    /// `dateTimeSeconds`: seconds since the Unix epoch.
    DateTimeSeconds(u32),
    /// `dateTimeMilliseconds`: milliseconds since the Unix epoch.
    DateTimeMillis(u64),
    /// `dateTimeMicroseconds`, converted from NTP: microseconds since the Unix epoch
    /// (negative before 1970).
    DateTimeMicros(i64),
    /// `dateTimeNanoseconds`, converted from NTP: nanoseconds since the Unix epoch.
    DateTimeNanos(i64),
}

impl<'a> FieldValue<'a> {
    /// Decodes `raw` as `spec` says. `raw.len()` must be the field's length on the wire (the
    /// decoder guarantees the template checked it against the type).
    #[inline]
    pub fn decode(spec: &FieldSpec, raw: &'a [u8]) -> FieldValue<'a> {
        use DataType::*;
        match spec.data_type {
            Unsigned8 | Unsigned16 | Unsigned32 | Unsigned64 => FieldValue::Unsigned(be_uint(raw)),
            Signed8 | Signed16 | Signed32 | Signed64 => {
                let n = raw.len().clamp(1, 8);
                let shift = 64 - 8 * n as u32;
                FieldValue::Signed(((be_uint(raw) << shift) as i64) >> shift)
            }
            Float32 | Float64 => match raw.len() {
                4 => {
                    FieldValue::Float(f32::from_be_bytes(raw.try_into().unwrap_or_default()) as f64)
                }
                8 => FieldValue::Float(f64::from_be_bytes(raw.try_into().unwrap_or_default())),
                _ => FieldValue::Octets(raw),
            },
            Boolean => match raw {
                // RFC 7011 §6.1.5: 1 is true, 2 is false.
                [1] => FieldValue::Bool(true),
                [2] => FieldValue::Bool(false),
                _ => FieldValue::Octets(raw),
            },
            MacAddress => match <[u8; 6]>::try_from(raw) {
                Ok(m) => FieldValue::Mac(m),
                Err(_) => FieldValue::Octets(raw),
            },
            Ipv4Address => match <[u8; 4]>::try_from(raw) {
                Ok(a) => FieldValue::Ipv4(Ipv4Addr::from(a)),
                Err(_) => FieldValue::Octets(raw),
            },
            Ipv6Address => match <[u8; 16]>::try_from(raw) {
                Ok(a) => FieldValue::Ipv6(Ipv6Addr::from(a)),
                Err(_) => FieldValue::Octets(raw),
            },
            String => FieldValue::String(raw),
            DateTimeSeconds if raw.len() == 4 => FieldValue::DateTimeSeconds(be_uint(raw) as u32),
            DateTimeMilliseconds if raw.len() == 8 => FieldValue::DateTimeMillis(be_uint(raw)),
            DateTimeMicroseconds if raw.len() == 8 => {
                // §6.1.9: the 11 least significant fraction bits are not meaningful.
                let (s, f) = ntp_parts(raw);
                FieldValue::DateTimeMicros(
                    s * 1_000_000 + (((f & !0x7FF) * 1_000_000) >> 32) as i64,
                )
            }
            DateTimeNanoseconds if raw.len() == 8 => {
                let (s, f) = ntp_parts(raw);
                FieldValue::DateTimeNanos(s * 1_000_000_000 + ((f * 1_000_000_000) >> 32) as i64)
            }
            _ => FieldValue::Octets(raw),
        }
    }

    /// The value as an unsigned integer, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::Unsigned(v) => Some(v),
            FieldValue::DateTimeSeconds(v) => Some(v as u64),
            FieldValue::DateTimeMillis(v) => Some(v),
            _ => None,
        }
    }

    /// The value as text, when it is a string (lossy for invalid UTF-8).
    pub fn as_str(&self) -> Option<std::borrow::Cow<'a, str>> {
        match *self {
            FieldValue::String(b) => Some(std::string::String::from_utf8_lossy(b)),
            _ => None,
        }
    }
}

/// Big-endian unsigned integer of 1–8 bytes (longer input: the last 8 bytes).
#[inline]
pub fn be_uint(raw: &[u8]) -> u64 {
    let raw = if raw.len() > 8 {
        &raw[raw.len() - 8..]
    } else {
        raw
    };
    let mut b = [0u8; 8];
    b[8 - raw.len()..].copy_from_slice(raw);
    u64::from_be_bytes(b)
}

/// NTP seconds (relative to the Unix epoch) and the 32-bit fraction. NTP's 32-bit seconds wrap
/// in February 2036; as RFC 4330 §3 says, a clear top bit means the next era, so the values span
/// 1968–2104.
fn ntp_parts(raw: &[u8]) -> (i64, u64) {
    let v = be_uint(raw);
    let secs = v >> 32;
    let secs = if secs & 0x8000_0000 != 0 {
        secs
    } else {
        secs + (1 << 32)
    };
    (secs as i64 - NTP_UNIX_OFFSET as i64, v & 0xFFFF_FFFF)
}

/// NTP 64-bit timestamp for nanoseconds since the Unix epoch (`dateTimeNanoseconds`).
pub fn ntp_from_unix_nanos(nanos: u64) -> u64 {
    let secs = (nanos / 1_000_000_000 + NTP_UNIX_OFFSET) & 0xFFFF_FFFF;
    let frac = ((nanos % 1_000_000_000) << 32).div_ceil(1_000_000_000);
    (secs << 32) | frac
}

/// NTP 64-bit timestamp for microseconds since the Unix epoch (`dateTimeMicroseconds`).
pub fn ntp_from_unix_micros(micros: u64) -> u64 {
    let secs = (micros / 1_000_000 + NTP_UNIX_OFFSET) & 0xFFFF_FFFF;
    // Rounded up to a multiple of 2^11 so a reader that ignores the low 11 bits (§6.1.9) still
    // reads back the same microsecond.
    let frac = ((micros % 1_000_000) << 32)
        .div_ceil(1_000_000)
        .div_ceil(2048)
        * 2048;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ie::by_name;

    fn spec(name: &str, len: u16) -> FieldSpec {
        FieldSpec::named(name).unwrap().with_len(len)
    }

    #[test]
    fn reduced_size_integers_decode() {
        assert_eq!(
            FieldValue::decode(&spec("octetDeltaCount", 4), &[0, 0, 1, 0]),
            FieldValue::Unsigned(256)
        );
        assert_eq!(
            FieldValue::decode(&spec("octetDeltaCount", 1), &[7]),
            FieldValue::Unsigned(7)
        );
    }

    #[test]
    fn ntp_timestamps_round_trip() {
        let e = by_name("flowStartNanoseconds").unwrap();
        for nanos in [
            0u64,
            1,
            999_999_999,
            1_700_000_000_123_456_789,
            2_085_978_496_000_000_001,
            4_000_000_000_999_999_999,
        ] {
            let raw = ntp_from_unix_nanos(nanos).to_be_bytes();
            assert_eq!(
                FieldValue::decode(&FieldSpec::of(e), &raw),
                FieldValue::DateTimeNanos(nanos as i64)
            );
        }
        let e = by_name("flowStartMicroseconds").unwrap();
        for micros in [0u64, 1, 999_999, 1_700_000_000_123_456] {
            let raw = ntp_from_unix_micros(micros).to_be_bytes();
            assert_eq!(
                FieldValue::decode(&FieldSpec::of(e), &raw),
                FieldValue::DateTimeMicros(micros as i64)
            );
        }
    }
}
