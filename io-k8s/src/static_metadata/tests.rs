use std::net::IpAddr;
use std::time::Duration;

use flowcore::metadata::MetadataIndex;
use flowcore::model::Timestamp;
use flowcore::policy::Verdict;

use super::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/metadata.yaml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn example_index() -> MetadataIndex {
    let m = load(Path::new(EXAMPLE)).expect("example loads");
    assert!(m.ignored.is_empty(), "{:?}", m.ignored);
    let mut index = MetadataIndex::new(Duration::from_secs(60));
    m.apply_to(&mut index, Timestamp::from_secs(1_800_000_000));
    index
}

#[test]
fn example_loads_into_an_index_and_ips_resolve() {
    let mut index = example_index();
    let now = Timestamp::from_secs(1_800_000_000);
    let st = index.stats();
    assert_eq!((st.pods, st.nodes, st.services, st.policies), (6, 2, 2, 2));

    let name_of = |index: &MetadataIndex, a: &str| {
        let id = index.pod_at(ip(a), now).expect("a Pod holds the IP");
        let p = index.pod(id).unwrap();
        let i = index.interner();
        format!(
            "{}/{}@{}",
            i.resolve(p.namespace),
            i.resolve(p.name),
            i.resolve(p.node.unwrap())
        )
    };
    assert_eq!(name_of(&index, "10.244.1.10"), "frontend/web-1@node-a");
    assert_eq!(name_of(&index, "10.244.2.10"), "frontend/web-2@node-b");
    assert_eq!(name_of(&index, "10.244.2.30"), "backend/db-1@node-b");
    let api1 = index.pod_at(ip("10.244.1.20"), now).unwrap();
    assert_eq!(
        index.pod(api1).unwrap().labels_json,
        index.interner().get("{\"app\":\"api\"}").unwrap()
    );

    // ClusterIP with named ports, and a NodePort on a Node address.
    let hit = index.service(ip("10.96.0.20"), 6, 80).unwrap();
    assert_eq!(index.interner().resolve(hit.port_name), "backend/api:http");
    let hit = index.service(ip("10.96.0.20"), 6, 9090).unwrap();
    assert_eq!(
        index.interner().resolve(hit.port_name),
        "backend/api:metrics"
    );
    let hit = index.service(ip("192.168.10.12"), 6, 30080).unwrap();
    assert_eq!(index.interner().resolve(hit.port_name), "frontend/web");
    assert!(index.service(ip("10.96.0.20"), 17, 80).is_none());
    assert!(index.node_by_address(ip("192.168.10.11")).is_some());
    assert!(index.node_by_pod_cidr(ip("10.244.2.99")).is_some());

    // Policies: web → api's named port is admitted; anything else into backend is denied.
    let web1 = index.pod_at(ip("10.244.1.10"), now);
    let client = index.pod_at(ip("10.244.1.11"), now);
    let db = index.pod_at(ip("10.244.2.30"), now);
    let (ing, _) = index.evaluate_policies(
        (ip("10.244.1.10"), web1),
        (ip("10.244.1.20"), Some(api1)),
        6,
        8080,
    );
    assert!(matches!(ing.verdict, Verdict::Allowed { .. }), "{ing:?}");
    let (ns, name) = ing.policy.unwrap();
    assert_eq!(
        (index.interner().resolve(ns), index.interner().resolve(name)),
        ("backend", "allow-web-to-api")
    );
    let (ing, _) = index.evaluate_policies(
        (ip("10.244.1.11"), client),
        (ip("10.244.1.20"), Some(api1)),
        6,
        8080,
    );
    assert_eq!(ing.verdict, Verdict::WouldDeny);
    let (ing, _) =
        index.evaluate_policies((ip("10.244.1.10"), web1), (ip("10.244.2.30"), db), 6, 5432);
    assert_eq!(ing.verdict, Verdict::WouldDeny);
}

#[test]
fn example_service_backends_come_from_the_endpoint_slice() {
    let m = load(Path::new(EXAMPLE)).unwrap();
    let api = m
        .updates
        .iter()
        .rev()
        .find_map(|u| match u {
            MetadataUpdate::Service(s) if s.name == "api" => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(api.backends, vec![ip("10.244.1.20"), ip("10.244.2.20")]);
}

#[test]
fn other_kinds_are_ignored_and_listed() {
    let m = parse(
        "f.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\n---\n",
    )
    .unwrap();
    assert!(m.updates.is_empty());
    assert_eq!(m.ignored, ["Deployment demo/web"]);
}

#[test]
fn a_bad_ip_names_file_document_object_and_field() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n\
        apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x}\n\
        - apiVersion: v1\n  kind: Pod\n  metadata: {name: web-1, namespace: demo}\n  status: {podIP: 10.0.0.x}\n";
    let e = parse("meta.yaml", text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "meta.yaml: document 2, items[1] (Pod demo/web-1): invalid status.podIP \"10.0.0.x\": \
         expected an IPv4 or IPv6 address"
    );
}

#[test]
fn a_type_error_names_the_json_path() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: demo}\nspec:\n  containers:\n  - name: c\n    ports:\n    - {containerPort: eighty}\n";
    let e = parse("meta.yaml", text).unwrap_err();
    assert_eq!(
        e.to_string(),
        "meta.yaml: document 1 (Pod demo/web-1): field spec.containers[0].ports[0].containerPort: \
         invalid type: string \"eighty\", expected i32"
    );
}

#[test]
fn shape_errors() {
    let e = parse("m.yaml", "metadata: {name: x}\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("document 1 (object x): missing kind"),
        "{e}"
    );
    let e = parse("m.yaml", "kind: List\nitems: 3\n").unwrap_err();
    assert!(e.to_string().contains("a List needs an items array"), "{e}");
    let e = parse("m.yaml", "kind: [\n").unwrap_err();
    assert!(matches!(e, StaticError::Yaml { .. }), "{e}");
    let e = load(Path::new("/nonexistent/meta.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/meta.yaml: cannot read"),
        "{e}"
    );
}
