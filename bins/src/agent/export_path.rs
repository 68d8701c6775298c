//! The agent's whole export path after the exporter core: the [`Pipeline`] (encoding, sharding)
//! and one transport actor per aggregator replica, with the bookkeeping that turns each
//! message's fate into `ack`/`nack` of its records. The agent's main loop and `flowlens demo`
//! both drive it, so the demo exercises exactly what runs on a Node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flowcore::config::CollectorAddr;
use flowcore::exporter::{ExportId, FlowExporter};
use flowcore::ipfix::EncoderConfig;
use flowcore::model::Timestamp;
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::pipeline::Pipeline;
use crate::transport::Transport;
use crate::transport::exporter::{
    Exporter, ExporterConfig as TransportConfig, Outcome, SessionId, SessionState,
};
use crate::transport::metrics::ExporterMetrics;

/// Something the transport reported.
pub enum PathEvent {
    Outcome(Outcome),
    /// Replica `i` has a new session (or none).
    Session(usize, Option<SessionId>),
}

/// What a call settled: records written, and records failed (to be re-exported).
#[derive(Clone, Copy, Debug, Default)]
pub struct Settled {
    pub exported: u64,
    pub failed: u64,
}

pub struct ExportPath {
    pub pipeline: Pipeline,
    exporters: Vec<Exporter>,
    sessions: Vec<watch::Receiver<SessionState>>,
    current: Vec<Option<SessionId>>,
    outcomes: mpsc::Receiver<Outcome>,
    in_flight: HashMap<u64, Vec<ExportId>>,
    next_tag: u64,
    /// Messages handed to the transports and not yet reported, at most.
    max_in_flight: usize,
}

impl ExportPath {
    /// Starts one transport actor per collector address.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        collectors: &[CollectorAddr],
        transport: Transport,
        tls: Option<watch::Receiver<Arc<ClientConfig>>>,
        server_name: Option<String>,
        queue_capacity: usize,
        enc_cfg: EncoderConfig,
        metrics: &ExporterMetrics,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ExportPath> {
        let names: Vec<String> = collectors.iter().map(|c| c.to_string()).collect();
        let pipeline = Pipeline::new(enc_cfg, &names)?;
        let (outcome_tx, outcomes) =
            mpsc::channel::<Outcome>(queue_capacity * collectors.len().max(1) + 1);
        let mut exporters = Vec::new();
        let mut sessions = Vec::new();
        for c in collectors {
            let mut t = TransportConfig::new(c.clone(), transport);
            t.tls = tls.clone();
            t.server_name = server_name.clone();
            t.queue_capacity = queue_capacity;
            let (ex, mut rx, _task) = Exporter::spawn(t, metrics.clone(), shutdown.child_token());
            let fwd = outcome_tx.clone();
            tokio::spawn(async move {
                while let Some(o) = rx.recv().await {
                    if fwd.send(o).await.is_err() {
                        return;
                    }
                }
            });
            sessions.push(ex.sessions());
            exporters.push(ex);
        }
        Ok(ExportPath {
            pipeline,
            // Messages are up to 64 KiB: 256 per replica bounds the IPFIX held for the transport
            // at 16 MiB each, while keeping tens of thousands of records moving.
            max_in_flight: queue_capacity.min(256) * exporters.len().max(1),
            current: vec![None; exporters.len()],
            exporters,
            sessions,
            outcomes,
            in_flight: HashMap::new(),
            next_tag: 0,
        })
    }

    /// Messages written to a socket but not yet confirmed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Encodes what the core has to send and hands it to the transport, a bounded amount at a
    /// time: no more than `max_in_flight` messages await their outcome, and records beyond that
    /// stay due in the core until outcomes free room (the caller pumps again after each event).
    /// A message with no session or a full queue is failed at once (nacked).
    pub fn pump(&mut self, now: Timestamp, core: &mut FlowExporter) -> Settled {
        let mut s = Settled::default();
        loop {
            let room = self.max_in_flight.saturating_sub(self.in_flight.len());
            if room == 0 {
                break;
            }
            let more = self.pipeline.pump(now, core, room);
            while let Some(o) = self.pipeline.poll_outgoing() {
                if let Some(session) = self.current[o.shard] {
                    self.next_tag += 1;
                    if self.exporters[o.shard]
                        .try_send(session, self.next_tag, o.message)
                        .is_ok()
                    {
                        self.in_flight.insert(self.next_tag, o.exports);
                        continue;
                    }
                }
                s.failed += o.exports.len() as u64;
                Pipeline::settle(core, &o.exports, false);
            }
            if !more {
                break;
            }
        }
        s
    }

    /// The next transport event.
    pub async fn next_event(&mut self) -> Option<PathEvent> {
        tokio::select! {
            o = self.outcomes.recv() => o.map(PathEvent::Outcome),
            (i, s) = changed(&mut self.sessions) => Some(PathEvent::Session(i, s)),
        }
    }

    /// Applies a transport event to the core.
    pub fn handle(&mut self, ev: PathEvent, now: Timestamp, core: &mut FlowExporter) -> Settled {
        let mut s = Settled::default();
        match ev {
            PathEvent::Outcome(o) => {
                if let Some(ids) = self.in_flight.remove(&o.tag) {
                    let ok = o.result.is_ok();
                    if ok {
                        s.exported += ids.len() as u64;
                    } else {
                        s.failed += ids.len() as u64;
                    }
                    Pipeline::settle(core, &ids, ok);
                }
            }
            PathEvent::Session(i, session) => {
                if self.current.get(i).is_some_and(|c| *c != session) {
                    self.current[i] = session;
                    let stale = self.pipeline.new_session(i, now);
                    s.failed += stale.len() as u64;
                    Pipeline::settle(core, &stale, false);
                }
            }
        }
        s
    }

    /// Shutdown, after `core.shutdown`: sends the final record of every connection, a bounded
    /// number of messages at a time, until each is written or `grace` is over. Messages that fail
    /// (no session, a lost connection) are retried as the core schedules them (a timer tick after
    /// the failure), over whatever session the transport has by then. Returns what was settled
    /// and what was left (see [`Unfinished`]).
    pub async fn finish(
        &mut self,
        core: &mut FlowExporter,
        grace: Duration,
    ) -> (Settled, Unfinished) {
        let mut total = Settled::default();
        let mut add = |s: Settled| {
            total.exported += s.exported;
            total.failed += s.failed;
        };
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            add(self.pump(crate::clock::now(), core));
            let st = core.stats();
            if st.tracked + st.ending == 0 {
                break;
            }
            let retry = crate::clock::sleep_until(core.poll_timeout());
            tokio::select! {
                _ = &mut deadline => break,
                ev = self.next_event() => match ev {
                    Some(ev) => add(self.handle(ev, crate::clock::now(), core)),
                    None => break,
                },
                _ = retry => core.handle_timeout(crate::clock::now()),
            }
        }
        let st = core.stats();
        let handed_over = self.in_flight.values().map(Vec::len).sum::<usize>();
        let left = st.tracked + st.ending;
        (
            total,
            Unfinished {
                not_sent: left.saturating_sub(handed_over),
                handed_over: handed_over.min(left),
            },
        )
    }
}

/// Final records not known written when the shutdown's grace ran out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Never handed to the transport.
    pub not_sent: usize,
    /// Handed to the transport without an outcome yet: the transport may still write them as it
    /// stops.
    pub handed_over: usize,
}

impl Unfinished {
    pub fn total(&self) -> usize {
        self.not_sent + self.handed_over
    }
}

/// The first replica whose session changed, and its new session.
async fn changed(sessions: &mut [watch::Receiver<SessionState>]) -> (usize, Option<SessionId>) {
    if sessions.is_empty() {
        return std::future::pending().await;
    }
    let futs = sessions.iter_mut().enumerate().map(|(i, s)| {
        Box::pin(async move {
            if s.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            (i, s.borrow_and_update().current)
        })
    });
    futures::future::select_all(futs).await.0
}
