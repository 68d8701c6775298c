//! Joins Services with their EndpointSlices into flowcore's `ServiceInfo` (whose `backends` are
//! the EndpointSlice addresses).
//!
//! flowcore's model has one `Service` event and no EndpointSlice event, and the two objects
//! arrive on different watches in any order, so this keeps the last converted Service and the
//! addresses of each slice and emits a whole `ServiceInfo` whenever either side changes.
//! Invariant: an update is emitted only for a Service that exists; slices of a Service not (yet)
//! seen are kept and show up once it arrives.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use flowcore::metadata::{MetadataUpdate, ServiceInfo};

use crate::convert::SliceInfo;

type NsName = (String, String);

/// See the module docs.
#[derive(Debug, Default)]
pub struct ServiceJoin {
    /// Services as converted, `backends` empty.
    services: HashMap<NsName, ServiceInfo>,
    /// `(namespace, service)` → slice name → addresses; a BTreeMap so the backend order is
    /// deterministic.
    slices: HashMap<NsName, BTreeMap<String, Vec<IpAddr>>>,
    /// `(namespace, slice)` → the Service it belongs to, to move a slice whose label changed.
    slice_owner: HashMap<NsName, String>,
}

impl ServiceJoin {
    pub fn new() -> ServiceJoin {
        ServiceJoin::default()
    }

    fn backends(&self, key: &NsName) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for a in self
            .slices
            .get(key)
            .into_iter()
            .flat_map(|m| m.values().flatten())
        {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    fn joined(&self, key: &NsName) -> Option<MetadataUpdate> {
        let mut out = self.services.get(key)?.clone();
        out.backends = self.backends(key);
        Some(MetadataUpdate::Service(out))
    }

    /// A Service was added or changed.
    pub fn service(&mut self, mut s: ServiceInfo) -> MetadataUpdate {
        let key = (s.namespace.clone(), s.name.clone());
        s.backends.clear();
        let mut joined = s.clone();
        joined.backends = self.backends(&key);
        self.services.insert(key, s);
        MetadataUpdate::Service(joined)
    }

    /// A Service was deleted. Its slices stay until their own delete events (they are deleted
    /// after the Service by the garbage collector).
    pub fn service_deleted(&mut self, namespace: &str, name: &str) -> MetadataUpdate {
        self.services
            .remove(&(namespace.to_string(), name.to_string()));
        MetadataUpdate::ServiceDeleted {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// A slice was added or changed: the updates for the Services whose backends changed (its
    /// old Service too, if the slice moved).
    pub fn slice(&mut self, slice: SliceInfo, out: &mut Vec<MetadataUpdate>) {
        let slice_key = (slice.namespace.clone(), slice.name.clone());
        let old = self.remove_slice(&slice_key);
        if let Some(old_svc) = &old
            && slice.service.as_deref() != Some(old_svc.as_str())
        {
            out.extend(self.joined(&(slice.namespace.clone(), old_svc.clone())));
        }
        if let Some(svc) = slice.service {
            let key = (slice.namespace, svc.clone());
            self.slices
                .entry(key.clone())
                .or_default()
                .insert(slice_key.1.clone(), slice.backends);
            self.slice_owner.insert(slice_key, svc);
            out.extend(self.joined(&key));
        }
    }

    /// A slice was deleted: the update of its Service, if that Service exists.
    pub fn slice_deleted(&mut self, namespace: &str, name: &str) -> Option<MetadataUpdate> {
        let svc = self.remove_slice(&(namespace.to_string(), name.to_string()))?;
        self.joined(&(namespace.to_string(), svc))
    }

    fn remove_slice(&mut self, slice_key: &NsName) -> Option<String> {
        let svc = self.slice_owner.remove(slice_key)?;
        let key = (slice_key.0.clone(), svc.clone());
        if let Some(m) = self.slices.get_mut(&key) {
            m.remove(&slice_key.1);
            if m.is_empty() {
                self.slices.remove(&key);
            }
        }
        Some(svc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceInfo {
        ServiceInfo {
            namespace: "ns".into(),
            name: name.into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ..ServiceInfo::default()
        }
    }

    fn slice(name: &str, service: Option<&str>, ips: &[&str]) -> SliceInfo {
        SliceInfo {
            namespace: "ns".into(),
            name: name.into(),
            service: service.map(Into::into),
            backends: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn backends(u: &MetadataUpdate) -> Vec<String> {
        match u {
            MetadataUpdate::Service(s) => s.backends.iter().map(|a| a.to_string()).collect(),
            other => panic!("not a Service update: {other:?}"),
        }
    }

    #[test]
    fn slices_before_and_after_the_service_join() {
        let mut j = ServiceJoin::new();
        let mut out = Vec::new();
        j.slice(slice("web-a", Some("web"), &["10.0.1.5"]), &mut out);
        assert!(out.is_empty(), "no Service yet: nothing to emit");
        let u = j.service(svc("web"));
        assert_eq!(backends(&u), ["10.0.1.5"]);
        j.slice(
            slice("web-b", Some("web"), &["10.0.2.7", "10.0.1.5"]),
            &mut out,
        );
        assert_eq!(backends(&out[0]), ["10.0.1.5", "10.0.2.7"]);
        let u = j.slice_deleted("ns", "web-a").unwrap();
        assert_eq!(backends(&u), ["10.0.2.7", "10.0.1.5"]);
        assert_eq!(
            j.service_deleted("ns", "web"),
            MetadataUpdate::ServiceDeleted {
                namespace: "ns".into(),
                name: "web".into()
            }
        );
        assert!(j.slice_deleted("ns", "web-b").is_none());
    }

    #[test]
    fn a_slice_that_changes_service_updates_both() {
        let mut j = ServiceJoin::new();
        j.service(svc("a"));
        j.service(svc("b"));
        let mut out = Vec::new();
        j.slice(slice("s", Some("a"), &["10.0.0.1"]), &mut out);
        out.clear();
        j.slice(slice("s", Some("b"), &["10.0.0.1"]), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(backends(&out[0]), Vec::<String>::new());
        assert_eq!(backends(&out[1]), ["10.0.0.1"]);
        out.clear();
        j.slice(slice("s", None, &["10.0.0.1"]), &mut out);
        assert_eq!(out.len(), 1, "unlabelled slice only clears its old Service");
    }
}
