//! A scripted Kubernetes API server on 127.0.0.1 for the informer tests.
//!
//! No real API server can run on this machine, so this replays recorded list and watch
//! responses (tests/fixtures) over plain HTTP/1.1 to kube's real `Client`. Each resource has a
//! queue of list responses and a queue of watch responses; a watch either ends after its lines
//! (the server dropping the connection) or stays open. Once a queue is empty, lists answer an
//! empty list and watches hang, as a quiet cluster does. Every request is logged so tests can
//! check what the client asked for (resourceVersion, fieldSelector, …).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub const PODS: &str = "/api/v1/pods";
pub const NODES: &str = "/api/v1/nodes";
pub const SERVICES: &str = "/api/v1/services";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const ENDPOINT_SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const NETWORK_POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One scripted list answer.
pub struct ListReply {
    pub status: StatusCode,
    pub body: String,
    /// Held until notified (to keep one kind's initial list pending).
    pub gate: Option<Arc<Notify>>,
}

impl ListReply {
    pub fn ok(body: String) -> ListReply {
        ListReply {
            status: StatusCode::OK,
            body,
            gate: None,
        }
    }
}

/// One scripted watch answer: newline-separated watch events.
pub struct WatchReply {
    pub lines: String,
    /// true: end the response after the lines (a dropped watch); false: keep it open.
    pub close: bool,
    /// The lines are held until notified (to order events across kinds).
    pub gate: Option<Arc<Notify>>,
}

#[derive(Default)]
struct Script {
    lists: HashMap<&'static str, VecDeque<ListReply>>,
    watches: HashMap<&'static str, VecDeque<WatchReply>>,
}

/// The running server.
pub struct FakeApi {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    log: Arc<watch::Sender<Vec<String>>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeApi {
    pub async fn start() -> FakeApi {
        Self::start_with(None).await
    }

    /// HTTPS with `tls`'s certificate (plain HTTP without).
    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> FakeApi {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let log = Arc::new(watch::Sender::new(Vec::new()));
        let (s, l) = (script.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, l) = (s.clone(), l.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(s.clone(), l.clone(), req));
                    // Errors here are the client closing a hanging watch at test end, or a
                    // client refusing the certificate.
                    match acceptor {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(tls), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        FakeApi { addr, script, log }
    }

    pub fn list(&self, path: &'static str, reply: ListReply) {
        let mut s = self.script.lock().unwrap();
        s.lists.entry(path).or_default().push_back(reply);
    }

    pub fn watch(&self, path: &'static str, lines: String, close: bool) {
        self.watch_reply(
            path,
            WatchReply {
                lines,
                close,
                gate: None,
            },
        );
    }

    pub fn watch_reply(&self, path: &'static str, reply: WatchReply) {
        let mut s = self.script.lock().unwrap();
        s.watches.entry(path).or_default().push_back(reply);
    }

    /// A kube client for this server, over plain HTTP.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// A kube client for this server over HTTPS, trusting `ca` (DER) only.
    pub fn tls_client(&self, ca: Option<Vec<u8>>) -> kube::Client {
        let url = format!("https://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.root_cert = ca.map(|c| vec![c]);
        kube::Client::try_from(config).unwrap()
    }

    /// Requests so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    /// Waits until some request satisfies `pred`; returns it.
    pub async fn wait_request(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut rx = self.log.subscribe();
        let log = rx
            .wait_for(|l| l.iter().any(|r| pred(r)))
            .await
            .expect("server alive");
        log.iter().find(|r| pred(r)).cloned().unwrap()
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (server TLS config, CA DER).
pub fn test_pki() -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake kubernetes CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (Arc::new(config), ca.der().to_vec())
}

fn empty_list(path: &str) -> String {
    let (kind, api) = match path {
        PODS => ("PodList", "v1"),
        NODES => ("NodeList", "v1"),
        SERVICES => ("ServiceList", "v1"),
        NAMESPACES => ("NamespaceList", "v1"),
        ENDPOINT_SLICES => ("EndpointSliceList", "discovery.k8s.io/v1"),
        _ => ("NetworkPolicyList", "networking.k8s.io/v1"),
    };
    format!(
        r#"{{"kind":"{kind}","apiVersion":"{api}","metadata":{{"resourceVersion":"1000"}},"items":[]}}"#
    )
}

async fn serve(
    script: Arc<Mutex<Script>>,
    log: Arc<watch::Sender<Vec<String>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    log.send_modify(|l| l.push(format!("{path}?{query}")));
    let known = [
        PODS,
        NODES,
        SERVICES,
        NAMESPACES,
        ENDPOINT_SLICES,
        NETWORK_POLICIES,
    ];
    let Some(&key) = known.iter().find(|k| **k == path) else {
        return Ok(json(StatusCode::NOT_FOUND, status_body(404, "NotFound")));
    };
    let is_watch = query.split('&').any(|kv| kv == "watch=true");
    if is_watch {
        let reply = script
            .lock()
            .unwrap()
            .watches
            .get_mut(key)
            .and_then(VecDeque::pop_front);
        let (lines, close, gate) = match reply {
            Some(r) => (r.lines, r.close, r.gate),
            None => (String::new(), false, None),
        };
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = lines
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Ok(Frame::data(Bytes::from(format!("{l}\n")))))
            .collect();
        // The response head goes out at once (as the API server's does); a gate holds the events.
        let mut chunks = Some(chunks);
        let stream = futures::stream::once(async move {
            if let Some(g) = gate {
                g.notified().await;
            }
        })
        .flat_map(move |()| futures::stream::iter(chunks.take().unwrap_or_default()));
        let body = if close {
            BodyExt::boxed(StreamBody::new(stream))
        } else {
            BodyExt::boxed(StreamBody::new(stream.chain(futures::stream::pending())))
        };
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(resp);
    }
    let reply = script
        .lock()
        .unwrap()
        .lists
        .get_mut(key)
        .and_then(VecDeque::pop_front);
    let reply = reply.unwrap_or_else(|| ListReply::ok(empty_list(key)));
    if let Some(gate) = reply.gate {
        gate.notified().await;
    }
    Ok(json(reply.status, reply.body))
}

pub fn status_body(code: u16, reason: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"scripted {reason}","reason":"{reason}","code":{code}}}"#
    )
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}
