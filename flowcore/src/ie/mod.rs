//! The information-element registry: the single source of truth for every IE flowlens knows —
//! name, enterprise number (PEN), element id, abstract data type and default length. The codec,
//! JSON output, store columns and UI all read it; nothing else spells an IE's number.
//!
//! Three registries are merged:
//! - IANA (PEN 0): the elements the reference's tables use, plus the common ones third-party
//!   exporters (softflowd, pmacct, routers) send.
//! - Reverse (PEN 29305, RFC 5103): derived from the IANA table, `reverse` + the IANA name with
//!   its first letter upper-cased, for every IANA element RFC 5103 §6.1 does not list as
//!   non-reversible.
//! - Antrea (PEN 56506): the Kubernetes fields of the reference, plus the newer ones in
//!   DESIGN.md.
//!
//! Note on `originalObservationDomainId`: the reference table gives it id 151 (that is
//! `flowEndSeconds`); IANA assigns 405, which flowlens uses.

mod table;

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// IANA's registry (enterprise bit clear).
pub const PEN_IANA: u32 = 0;
/// RFC 5103 reverse information elements.
pub const PEN_REVERSE: u32 = 29305;
/// Antrea's Kubernetes information elements; flowlens emits them so Antrea collectors decode us.
pub const PEN_ANTREA: u32 = 56506;

/// Length that marks a variable-length field in a template (RFC 7011 §7).
pub const VARLEN: u16 = 0xFFFF;

/// RFC 7012 §3.1 abstract data types (plus RFC 6313 lists, carried as octets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    OctetArray,
    Unsigned8,
    Unsigned16,
    Unsigned32,
    Unsigned64,
    Signed8,
    Signed16,
    Signed32,
    Signed64,
    Float32,
    Float64,
    Boolean,
    MacAddress,
    String,
    DateTimeSeconds,
    DateTimeMilliseconds,
    DateTimeMicroseconds,
    DateTimeNanoseconds,
    Ipv4Address,
    Ipv6Address,
    BasicList,
    SubTemplateList,
    SubTemplateMultiList,
}

impl DataType {
    /// The length an exporter uses when it does not reduce the size; `VARLEN` for
    /// variable-length types.
    pub const fn default_len(self) -> u16 {
        use DataType::*;
        match self {
            Unsigned8 | Signed8 | Boolean => 1,
            Unsigned16 | Signed16 => 2,
            Unsigned32 | Signed32 | Float32 | DateTimeSeconds | Ipv4Address => 4,
            MacAddress => 6,
            Unsigned64 | Signed64 | Float64 | DateTimeMilliseconds | DateTimeMicroseconds
            | DateTimeNanoseconds => 8,
            Ipv6Address => 16,
            OctetArray | String | BasicList | SubTemplateList | SubTemplateMultiList => VARLEN,
        }
    }

    /// Whether a field of this type may be sent with `len` octets (RFC 7011 §6.2 reduced-size
    /// encoding included). Octet arrays and strings take any length.
    pub const fn accepts_len(self, len: u16) -> bool {
        use DataType::*;
        match self {
            Unsigned8 | Signed8 | Boolean => len == 1,
            Unsigned16 | Signed16 => len >= 1 && len <= 2,
            Unsigned32 | Signed32 => len >= 1 && len <= 4,
            Unsigned64 | Signed64 => len >= 1 && len <= 8,
            Float32 => len == 4,
            Float64 => len == 4 || len == 8,
            DateTimeSeconds => len == 4,
            DateTimeMilliseconds | DateTimeMicroseconds | DateTimeNanoseconds => len == 8,
            Ipv4Address => len == 4,
            Ipv6Address => len == 16,
            MacAddress => len == 6,
            OctetArray | String | BasicList | SubTemplateList | SubTemplateMultiList => true,
        }
    }

    /// RFC 7012 name of the type (as in IANA's `informationElementDataType` registry).
    pub const fn name(self) -> &'static str {
        use DataType::*;
        match self {
            OctetArray => "octetArray",
            Unsigned8 => "unsigned8",
            Unsigned16 => "unsigned16",
            Unsigned32 => "unsigned32",
            Unsigned64 => "unsigned64",
            Signed8 => "signed8",
            Signed16 => "signed16",
            Signed32 => "signed32",
            Signed64 => "signed64",
            Float32 => "float32",
            Float64 => "float64",
            Boolean => "boolean",
            MacAddress => "macAddress",
            String => "string",
            DateTimeSeconds => "dateTimeSeconds",
            DateTimeMilliseconds => "dateTimeMilliseconds",
            DateTimeMicroseconds => "dateTimeMicroseconds",
            DateTimeNanoseconds => "dateTimeNanoseconds",
            Ipv4Address => "ipv4Address",
            Ipv6Address => "ipv6Address",
            BasicList => "basicList",
            SubTemplateList => "subTemplateList",
            SubTemplateMultiList => "subTemplateMultiList",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity of an IE on the wire: enterprise number and element id (enterprise bit stripped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IeId {
    pub pen: u32,
    pub id: u16,
}

impl IeId {
    pub const fn new(pen: u32, id: u16) -> Self {
        IeId { pen, id }
    }
    pub const fn iana(id: u16) -> Self {
        IeId { pen: PEN_IANA, id }
    }
}

impl fmt::Display for IeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pen == PEN_IANA {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{}/{}", self.pen, self.id)
        }
    }
}

/// One registry entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InfoElement {
    pub name: &'static str,
    pub pen: u32,
    pub id: u16,
    pub data_type: DataType,
    /// Default length on the wire (`VARLEN` for variable-length types).
    pub len: u16,
}

impl InfoElement {
    pub const fn ie_id(&self) -> IeId {
        IeId::new(self.pen, self.id)
    }
}

/// The merged registry, built once on first use.
pub struct Registry {
    all: Vec<InfoElement>,
    by_id: HashMap<IeId, usize>,
    by_name: HashMap<&'static str, usize>,
}

impl Registry {
    /// The process-wide registry.
    pub fn get() -> &'static Registry {
        static REG: OnceLock<Registry> = OnceLock::new();
        REG.get_or_init(Registry::build)
    }

    fn build() -> Registry {
        let mut all: Vec<InfoElement> =
            Vec::with_capacity(table::IANA.len() * 2 + table::ANTREA.len());
        let mut push = |name, pen, id, data_type: DataType| {
            all.push(InfoElement {
                name,
                pen,
                id,
                data_type,
                len: data_type.default_len(),
            })
        };
        for &(id, name, ty) in table::IANA {
            push(name, PEN_IANA, id, ty);
        }
        for &(id, name, ty) in table::IANA {
            if !table::NON_REVERSIBLE.contains(&id) {
                // Leaked once per process (bounded: one name per IANA entry), so the registry
                // hands out `&'static str` names and decoding never allocates for a name.
                let rname: &'static str = Box::leak(reverse_name(name).into_boxed_str());
                push(rname, PEN_REVERSE, id, ty);
            }
        }
        for &(id, name, ty) in table::ANTREA {
            push(name, PEN_ANTREA, id, ty);
        }
        let by_id = all
            .iter()
            .enumerate()
            .map(|(i, e)| (e.ie_id(), i))
            .collect();
        let by_name = all.iter().enumerate().map(|(i, e)| (e.name, i)).collect();
        Registry {
            all,
            by_id,
            by_name,
        }
    }

    pub fn lookup(&self, id: IeId) -> Option<&InfoElement> {
        self.by_id.get(&id).map(|&i| &self.all[i])
    }

    pub fn by_name(&self, name: &str) -> Option<&InfoElement> {
        self.by_name.get(name).map(|&i| &self.all[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = &InfoElement> {
        self.all.iter()
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

/// Registry entry by wire identity.
pub fn lookup(id: IeId) -> Option<&'static InfoElement> {
    Registry::get().lookup(id)
}

/// Registry entry by name (`octetDeltaCount`, `reverseOctetDeltaCount`, `sourcePodName` …).
pub fn by_name(name: &str) -> Option<&'static InfoElement> {
    Registry::get().by_name(name)
}

/// `octetDeltaCount` → `reverseOctetDeltaCount` (RFC 5103 §6.1 naming).
pub fn reverse_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 7);
    out.push_str("reverse");
    let mut chars = name.chars();
    if let Some(c) = chars.next() {
        out.extend(c.to_uppercase());
    }
    out.push_str(chars.as_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_are_unique_and_round_trip() {
        let reg = Registry::get();
        assert_eq!(reg.by_id.len(), reg.len(), "duplicate (pen, id)");
        assert_eq!(reg.by_name.len(), reg.len(), "duplicate name");
        for e in reg.iter() {
            assert_eq!(lookup(e.ie_id()).unwrap().name, e.name);
            assert_eq!(by_name(e.name).unwrap().ie_id(), e.ie_id());
        }
    }

    #[test]
    fn reference_tables_are_present_with_their_types() {
        use DataType::*;
        let want: &[(&str, u32, u16, DataType)] = &[
            ("flowStartSeconds", 0, 150, DateTimeSeconds),
            ("flowEndSeconds", 0, 151, DateTimeSeconds),
            ("flowEndReason", 0, 136, Unsigned8),
            ("sourceIPv4Address", 0, 8, Ipv4Address),
            ("destinationIPv6Address", 0, 28, Ipv6Address),
            ("octetDeltaCount", 0, 1, Unsigned64),
            ("reversePacketTotalCount", PEN_REVERSE, 86, Unsigned64),
            ("reverseOctetDeltaCount", PEN_REVERSE, 1, Unsigned64),
            ("sourcePodNamespace", PEN_ANTREA, 100, String),
            ("destinationClusterIPv4", PEN_ANTREA, 106, Ipv4Address),
            ("destinationClusterIPv6", PEN_ANTREA, 107, Ipv6Address),
            ("destinationServicePort", PEN_ANTREA, 108, Unsigned16),
            ("tcpState", PEN_ANTREA, 136, String),
            ("flowType", PEN_ANTREA, 137, Unsigned8),
            (
                "reverseOctetDeltaCountFromDestinationNode",
                PEN_ANTREA,
                135,
                Unsigned64,
            ),
            ("originalExporterIPv4Address", 0, 403, Ipv4Address),
            ("originalObservationDomainId", 0, 405, Unsigned32),
            ("throughput", PEN_ANTREA, 145, Unsigned64),
            ("clusterId", PEN_ANTREA, 158, String),
        ];
        for &(name, pen, id, ty) in want {
            let e = by_name(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!((e.pen, e.id, e.data_type), (pen, id, ty), "{name}");
        }
    }

    #[test]
    fn non_reversible_elements_have_no_reverse() {
        assert!(
            lookup(IeId::new(PEN_REVERSE, 149)).is_none(),
            "observationDomainId"
        );
        assert!(
            lookup(IeId::new(PEN_REVERSE, 210)).is_none(),
            "paddingOctets"
        );
        assert!(by_name("reverseFlowStartMilliseconds").is_some());
    }
}
