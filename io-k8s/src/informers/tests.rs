use serde_json::json;

use super::*;

fn pod(name: &str, uid: &str, ip: &str) -> Obj {
    Obj::Pod(Box::new(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo", "uid": uid},
            "status": {"podIPs": [{"ip": ip}]}}))
        .unwrap(),
    ))
}

fn names(out: &[MetadataUpdate]) -> Vec<String> {
    out.iter()
        .map(|u| match u {
            MetadataUpdate::Pod(p) => format!("+{}", p.name),
            MetadataUpdate::PodDeleted { uid } => format!("-{uid}"),
            MetadataUpdate::Service(s) => format!("+svc {} {:?}", s.name, s.backends),
            MetadataUpdate::ServiceDeleted { name, .. } => format!("-svc {name}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn relist_reconciles_deletions_and_counts() {
    let counters = Arc::new(Counters::default());
    let mut m = Mapper::new(counters.clone());
    let mut out = Vec::new();
    for ev in [
        Event::Init,
        Event::InitApply(pod("a", "ua", "10.0.0.1")),
        Event::InitApply(pod("b", "ub", "10.0.0.2")),
        Event::InitDone,
        Event::Apply(pod("c", "uc", "10.0.0.3")),
        Event::Delete(pod("a", "ua", "10.0.0.1")),
    ] {
        m.handle(Kind::Pod, Ok(ev), &mut out);
    }
    assert_eq!(names(&out), ["+a", "+b", "+c", "-ua"]);
    assert!(!m.all_listed(), "only Pods listed so far");
    out.clear();
    // A relist (after 410 Gone) that no longer has b: b was deleted while the watch was down.
    for ev in [
        Event::Init,
        Event::InitApply(pod("c", "uc", "10.0.0.3")),
        Event::InitApply(pod("d", "ud", "10.0.0.4")),
        Event::InitDone,
    ] {
        m.handle(Kind::Pod, Ok(ev), &mut out);
    }
    assert_eq!(names(&out), ["+c", "+d", "-ub"]);
    let st = counters.get(Kind::Pod);
    assert_eq!(
        st,
        KindStats {
            applied: 5,
            deleted: 2,
            relists: 1,
            gone: 0,
            errors: 0,
            skipped: 0
        }
    );
}

#[test]
fn bad_objects_are_skipped_and_counted() {
    let counters = Arc::new(Counters::default());
    let mut m = Mapper::new(counters.clone());
    let mut out = Vec::new();
    m.handle(
        Kind::Pod,
        Ok(Event::Apply(pod("x", "ux", "not-an-ip"))),
        &mut out,
    );
    let nameless = Obj::Pod(Box::new(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})).unwrap(),
    ));
    m.handle(Kind::Pod, Ok(Event::Delete(nameless)), &mut out);
    assert!(out.is_empty());
    assert_eq!(counters.get(Kind::Pod).skipped, 2);
}

#[test]
fn service_and_slices_join_across_streams() {
    let counters = Arc::new(Counters::default());
    let mut m = Mapper::new(counters.clone());
    let mut out = Vec::new();
    let svc = Obj::Service(Box::new(
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}))
        .unwrap(),
    ));
    let slice = |ips: &[&str]| {
        Obj::EndpointSlice(Box::new(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": ips.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>()})).unwrap()))
    };
    m.handle(
        Kind::EndpointSlice,
        Ok(Event::Apply(slice(&["10.0.0.1"]))),
        &mut out,
    );
    m.handle(Kind::Service, Ok(Event::Apply(svc)), &mut out);
    m.handle(Kind::EndpointSlice, Ok(Event::Init), &mut out);
    m.handle(Kind::EndpointSlice, Ok(Event::InitDone), &mut out);
    assert_eq!(names(&out), ["+svc web [10.0.0.1]", "+svc web []"]);
}

/// The informers and the `--metadata` loader produce the same updates for the same objects
/// (kubectl's `-o json` is YAML too, so the recorded API lists load as metadata files).
#[test]
fn informer_and_static_file_agree() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let files = [
        ("nodes-list.json", Kind::Node),
        ("namespaces-list.json", Kind::Namespace),
        ("pods-list-1.json", Kind::Pod),
        ("endpointslices-list.json", Kind::EndpointSlice),
        ("services-list.json", Kind::Service),
        ("networkpolicies-list.json", Kind::NetworkPolicy),
    ];
    let mut m = Mapper::new(Arc::new(Counters::default()));
    let mut from_watch = Vec::new();
    let mut text = String::new();
    for (file, kind) in files {
        let body = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        m.handle(kind, Ok(Event::Init), &mut from_watch);
        for item in list["items"].as_array().unwrap() {
            let o = match kind {
                Kind::Pod => Obj::Pod(serde_json::from_value(item.clone()).unwrap()),
                Kind::Node => Obj::Node(serde_json::from_value(item.clone()).unwrap()),
                Kind::Service => Obj::Service(serde_json::from_value(item.clone()).unwrap()),
                Kind::EndpointSlice => {
                    Obj::EndpointSlice(serde_json::from_value(item.clone()).unwrap())
                }
                Kind::Namespace => Obj::Namespace(serde_json::from_value(item.clone()).unwrap()),
                Kind::NetworkPolicy => {
                    Obj::NetworkPolicy(serde_json::from_value(item.clone()).unwrap())
                }
            };
            m.handle(kind, Ok(Event::InitApply(o)), &mut from_watch);
        }
        m.handle(kind, Ok(Event::InitDone), &mut from_watch);
        text.push_str(&body);
        text.push_str("\n---\n");
    }
    assert!(m.all_listed());
    let from_file = crate::static_metadata::parse("fixtures", &text).unwrap();
    assert!(from_file.ignored.is_empty());
    assert_eq!(from_file.updates, from_watch);
    assert_eq!(from_watch.len(), 2 + 2 + 3 + 1 + 2);
}
