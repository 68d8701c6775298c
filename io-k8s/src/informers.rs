//! Informers: kube watchers for Pods, Nodes, Services, EndpointSlices, Namespaces and
//! NetworkPolicies, turned into flowcore [`MetadataUpdate`]s on a bounded channel.
//!
//! One task drives all six watch streams (merged), so the Service ⋈ EndpointSlice join and the
//! counters need no locks. Each stream is kube's `watcher` with `default_backoff()`: API errors
//! back off exponentially (0.8 s … 30 s, jittered), a dropped watch resumes from the last
//! resourceVersion (bookmarks keep it fresh), and `410 Gone` makes the watcher list again.
//!
//! Instead of reflector stores (which would keep a second full copy of every object next to
//! the agent's `MetadataIndex`), the mapper remembers only each kind's object *keys*: after a
//! relist it emits deletes for the keys the new list no longer has, which reconciles deletions
//! missed while the watch was down.
//!
//! Invariants: the channel is bounded, so a slow consumer slows the watches (the API server
//! buffers) instead of growing memory; `ready` turns true once every kind's first list has been
//! delivered on the channel and stays true (a later relist refreshes data the agent already
//! has); no API input panics: objects that do not convert are counted (`skipped`) and logged.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flowcore::metadata::MetadataUpdate;
use futures::stream::{BoxStream, SelectAll};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy as K8sNetworkPolicy;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::convert;
use crate::services::ServiceJoin;

/// The watched kinds, in a fixed order (indexes of the counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Node,
    Service,
    EndpointSlice,
    Namespace,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Pod,
        Kind::Node,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Namespace,
        Kind::NetworkPolicy,
    ];

    /// The Kubernetes kind name (a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// Which Pods the agent watches. See io-k8s/README.md for the memory trade-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodScope {
    /// Every Pod of the cluster: names the remote Pod of an inter-Node flow and evaluates its
    /// policies locally. Memory grows with the cluster.
    Cluster,
    /// Only the Pods scheduled on this Node (`spec.nodeName=<node>` field selector); the
    /// aggregator fills in the other end of inter-Node flows.
    Node(String),
}

/// Informer settings.
#[derive(Clone, Debug)]
pub struct InformerConfig {
    pub pods: PodScope,
    /// Capacity of the update channel (updates, not bytes); a full channel pauses the watches.
    pub channel_capacity: usize,
}

impl Default for InformerConfig {
    fn default() -> Self {
        InformerConfig {
            pods: PodScope::Cluster,
            channel_capacity: 1024,
        }
    }
}

/// Counters of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Add/modify events (initial list items included) turned into updates.
    pub applied: u64,
    /// Delete events, plus deletes found by reconciling a relist.
    pub deleted: u64,
    /// Lists after the first: after `410 Gone` or a watch that could not resume.
    pub relists: u64,
    /// `410 Gone` answers (the watcher then relists).
    pub gone: u64,
    /// Watch/list errors, `410 Gone` included (each is followed by a backoff).
    pub errors: u64,
    /// Objects that did not convert (logged with the field).
    pub skipped: u64,
}

const APPLIED: usize = 0;
const DELETED: usize = 1;
const RELISTS: usize = 2;
const GONE: usize = 3;
const ERRORS: usize = 4;
const SKIPPED: usize = 5;

#[derive(Debug, Default)]
struct Counters([[AtomicU64; 6]; 6]);

impl Counters {
    fn add(&self, kind: Kind, which: usize, n: u64) {
        self.0[kind as usize][which].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, kind: Kind) -> KindStats {
        let c = &self.0[kind as usize];
        let g = |i: usize| c[i].load(Ordering::Relaxed);
        KindStats {
            applied: g(APPLIED),
            deleted: g(DELETED),
            relists: g(RELISTS),
            gone: g(GONE),
            errors: g(ERRORS),
            skipped: g(SKIPPED),
        }
    }
}

/// A cheap, cloneable view of running informers: readiness and counters.
#[derive(Clone, Debug)]
pub struct InformerHandle {
    ready: watch::Receiver<bool>,
    counters: Arc<Counters>,
}

impl InformerHandle {
    /// Whether every kind's initial list has been delivered on the channel.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once every kind's initial list has been delivered on the channel (at once if
    /// it already has). Returns `false` if the informers stopped before that.
    pub async fn ready(&self) -> bool {
        let mut rx = self.ready.clone();
        rx.wait_for(|r| *r).await.is_ok()
    }

    /// The readiness as a watch channel (for `/readyz`).
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    pub fn stats(&self, kind: Kind) -> KindStats {
        self.counters.get(kind)
    }
}

/// Running informers: the update channel, a handle, and the task.
#[derive(Debug)]
pub struct Informers {
    /// Updates to apply, in order, to the agent's `MetadataIndex`.
    pub updates: mpsc::Receiver<MetadataUpdate>,
    pub handle: InformerHandle,
    task: JoinHandle<()>,
}

impl Informers {
    /// Starts watching. Must be called inside a tokio runtime.
    pub fn spawn(client: kube::Client, config: InformerConfig) -> Informers {
        let mut pod_cfg = watcher::Config::default();
        if let PodScope::Node(node) = &config.pods {
            pod_cfg = pod_cfg.fields(&format!("spec.nodeName={node}"));
        }
        let all = watcher::Config::default();
        let mut streams: SelectAll<BoxStream<'static, (Kind, WatchResult)>> = SelectAll::new();
        streams.push(watch_kind(
            Api::<Pod>::all(client.clone()),
            pod_cfg,
            Kind::Pod,
            |o| Obj::Pod(Box::new(o)),
        ));
        streams.push(watch_kind(
            Api::<Node>::all(client.clone()),
            all.clone(),
            Kind::Node,
            |o| Obj::Node(Box::new(o)),
        ));
        streams.push(watch_kind(
            Api::<Service>::all(client.clone()),
            all.clone(),
            Kind::Service,
            |o| Obj::Service(Box::new(o)),
        ));
        streams.push(watch_kind(
            Api::<EndpointSlice>::all(client.clone()),
            all.clone(),
            Kind::EndpointSlice,
            |o| Obj::EndpointSlice(Box::new(o)),
        ));
        streams.push(watch_kind(
            Api::<Namespace>::all(client.clone()),
            all.clone(),
            Kind::Namespace,
            |o| Obj::Namespace(Box::new(o)),
        ));
        streams.push(watch_kind(
            Api::<K8sNetworkPolicy>::all(client),
            all,
            Kind::NetworkPolicy,
            |o| Obj::NetworkPolicy(Box::new(o)),
        ));
        Self::spawn_streams(streams, config.channel_capacity)
    }

    fn spawn_streams(
        mut streams: impl Stream<Item = (Kind, WatchResult)> + Send + Unpin + 'static,
        capacity: usize,
    ) -> Informers {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (ready_tx, ready_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let mut mapper = Mapper::new(counters.clone());
        let task = tokio::spawn(
            async move {
                let mut out = Vec::new();
                loop {
                    // A dropped receiver ends the watches at once, even on a quiet cluster.
                    let next = tokio::select! {
                        biased;
                        _ = tx.closed() => None,
                        next = streams.next() => next,
                    };
                    let Some((kind, ev)) = next else {
                        debug!("metadata update receiver dropped or streams ended; informers stop");
                        return;
                    };
                    mapper.handle(kind, ev, &mut out);
                    for u in out.drain(..) {
                        if tx.send(u).await.is_err() {
                            debug!("metadata update receiver dropped; informers stop");
                            return;
                        }
                    }
                    // Only now: ready means "the initial lists are on the channel", so an agent
                    // that drains the channel up to this point has the whole cluster.
                    if mapper.all_listed() && !*ready_tx.borrow() {
                        info!("informers ready: every initial list received");
                        ready_tx.send_replace(true);
                    }
                }
            }
            .instrument(info_span!("informers")),
        );
        Informers {
            updates: rx,
            handle: InformerHandle {
                ready: ready_rx,
                counters,
            },
            task,
        }
    }

    /// Stops the watches now. Dropping `updates` stops them too.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

/// A watched object of any kind (boxed: the API types are kilobytes each).
#[derive(Debug)]
pub(crate) enum Obj {
    Pod(Box<Pod>),
    Node(Box<Node>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Namespace(Box<Namespace>),
    NetworkPolicy(Box<K8sNetworkPolicy>),
}

pub(crate) type WatchResult = Result<Event<Obj>, watcher::Error>;

fn watch_kind<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Obj,
) -> BoxStream<'static, (Kind, WatchResult)>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, cfg)
        .default_backoff()
        .map(move |r| {
            let r = r.map(|ev| match ev {
                Event::Apply(o) => Event::Apply(wrap(o)),
                Event::Delete(o) => Event::Delete(wrap(o)),
                Event::Init => Event::Init,
                Event::InitApply(o) => Event::InitApply(wrap(o)),
                Event::InitDone => Event::InitDone,
            });
            (kind, r)
        })
        .boxed()
}

/// Keys of the objects of one kind the consumer has been told about.
#[derive(Debug, Default)]
struct Known {
    current: HashSet<String>,
    /// Keys seen since the last `Init`, while a (re)list is in progress.
    listing: Option<HashSet<String>>,
    lists: u64,
}

/// Watch events → updates (pure apart from the counters; unit-testable).
#[derive(Debug)]
pub(crate) struct Mapper {
    known: [Known; 6],
    join: ServiceJoin,
    counters: Arc<Counters>,
}

impl Mapper {
    fn new(counters: Arc<Counters>) -> Mapper {
        Mapper {
            known: Default::default(),
            join: ServiceJoin::new(),
            counters,
        }
    }

    fn all_listed(&self) -> bool {
        self.known.iter().all(|k| k.lists > 0)
    }

    fn handle(&mut self, kind: Kind, ev: WatchResult, out: &mut Vec<MetadataUpdate>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                self.counters.add(kind, ERRORS, 1);
                if let watcher::Error::WatchError(status) = &e
                    && status.code == 410
                {
                    self.counters.add(kind, GONE, 1);
                    warn!(kind = kind.name(), "watch answered 410 Gone; relisting");
                } else {
                    warn!(kind = kind.name(), error = %e, "watch error; backing off");
                }
                return;
            }
        };
        let known = &mut self.known[kind as usize];
        match ev {
            Event::Init => {
                if known.lists > 0 {
                    self.counters.add(kind, RELISTS, 1);
                    info!(kind = kind.name(), "relisting");
                }
                known.listing = Some(HashSet::new());
            }
            Event::InitApply(o) | Event::Apply(o) => self.apply(kind, o, out),
            Event::Delete(o) => {
                if let Some(key) = self.key(kind, &o) {
                    self.known[kind as usize].current.remove(&key);
                    self.counters.add(kind, DELETED, 1);
                    self.delete(kind, &key, out);
                }
            }
            Event::InitDone => {
                let known = &mut self.known[kind as usize];
                known.lists += 1;
                let listed = known.listing.take().unwrap_or_default();
                // Objects gone while the watch was down: the new list no longer has them.
                let mut gone: Vec<String> = known.current.difference(&listed).cloned().collect();
                gone.sort();
                known.current = listed;
                self.counters.add(kind, DELETED, gone.len() as u64);
                for key in gone {
                    self.delete(kind, &key, out);
                }
            }
        }
    }

    fn key(&self, kind: Kind, o: &Obj) -> Option<String> {
        let r = match o {
            Obj::Pod(p) => convert::pod_uid(p),
            Obj::Node(n) => convert::cluster_key(&n.metadata),
            Obj::Namespace(n) => convert::cluster_key(&n.metadata),
            Obj::Service(s) => convert::namespaced_key(&s.metadata).map(|(a, b)| a + "/" + &b),
            Obj::EndpointSlice(s) => {
                convert::namespaced_key(&s.metadata).map(|(a, b)| a + "/" + &b)
            }
            Obj::NetworkPolicy(p) => {
                convert::namespaced_key(&p.metadata).map(|(a, b)| a + "/" + &b)
            }
        };
        match r {
            Ok(k) => Some(k),
            Err(e) => {
                self.counters.add(kind, SKIPPED, 1);
                warn!(kind = kind.name(), error = %e, "skipping object");
                None
            }
        }
    }

    fn apply(&mut self, kind: Kind, o: Obj, out: &mut Vec<MetadataUpdate>) {
        let Some(key) = self.key(kind, &o) else {
            return;
        };
        let converted = match &o {
            Obj::Pod(p) => convert::pod(p).map(MetadataUpdate::Pod),
            Obj::Node(n) => convert::node(n).map(MetadataUpdate::Node),
            Obj::Namespace(n) => convert::namespace_info(n).map(MetadataUpdate::Namespace),
            Obj::NetworkPolicy(p) => convert::network_policy(p).map(MetadataUpdate::Policy),
            Obj::Service(s) => convert::service(s).map(|s| self.join.service(s)),
            Obj::EndpointSlice(s) => match convert::endpoint_slice(s) {
                Ok(slice) => {
                    self.join.slice(slice, out);
                    self.note(kind, key);
                    return;
                }
                Err(e) => Err(e),
            },
        };
        match converted {
            Ok(u) => {
                out.push(u);
                self.note(kind, key);
            }
            Err(e) => {
                self.counters.add(kind, SKIPPED, 1);
                warn!(kind = kind.name(), object = %key, error = %e, "skipping object");
            }
        }
    }

    fn note(&mut self, kind: Kind, key: String) {
        self.counters.add(kind, APPLIED, 1);
        let known = &mut self.known[kind as usize];
        if let Some(l) = &mut known.listing {
            l.insert(key.clone());
        }
        known.current.insert(key);
    }

    fn delete(&mut self, kind: Kind, key: &str, out: &mut Vec<MetadataUpdate>) {
        let split = || {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            (ns.to_string(), name.to_string())
        };
        match kind {
            Kind::Pod => out.push(MetadataUpdate::PodDeleted {
                uid: key.to_string(),
            }),
            Kind::Node => out.push(MetadataUpdate::NodeDeleted {
                name: key.to_string(),
            }),
            Kind::Namespace => out.push(MetadataUpdate::NamespaceDeleted {
                name: key.to_string(),
            }),
            Kind::Service => {
                let (ns, name) = split();
                out.push(self.join.service_deleted(&ns, &name));
            }
            Kind::EndpointSlice => {
                let (ns, name) = split();
                out.extend(self.join.slice_deleted(&ns, &name));
            }
            Kind::NetworkPolicy => {
                let (namespace, name) = split();
                out.push(MetadataUpdate::PolicyDeleted { namespace, name });
            }
        }
    }
}

#[cfg(test)]
mod tests;
