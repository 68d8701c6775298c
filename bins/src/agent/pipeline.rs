//! The agent's export pipeline, without sockets: the flowcore exporter's records are encoded into
//! IPFIX messages per aggregator replica, and each message remembers which records it carries, so
//! the transport's verdict on the message becomes `ack` or `nack` of exactly those records.
//!
//! Sharding: with several aggregator replicas, each flow goes to the replica with the highest
//! rendezvous score for its normalised 5-tuple. Both Nodes of a flow compute the same key (the
//! destination after DNAT), so both halves meet on one replica; when a replica goes away only its
//! flows move. The hash is fixed (SipHash with zero keys) so every agent agrees.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use flowcore::exporter::{ExportId, FlowExporter};
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{EncodeError, Encoder, EncoderConfig, Layout};
use flowcore::model::{FlowKey, Timestamp};

/// A message for one aggregator replica and the exports it carries.
#[derive(Debug)]
pub struct Outgoing {
    pub shard: usize,
    pub message: Bytes,
    pub exports: Vec<ExportId>,
}

struct Shard {
    name: String,
    enc: Encoder,
    /// Exports written into the encoder, in order, not yet assigned to a finished message.
    pending: VecDeque<ExportId>,
}

/// Counters.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    pub records: u64,
    pub messages: u64,
    /// Records the encoder refused (cannot happen with flowlens's layouts; counted, nacked).
    pub encode_errors: u64,
}

pub struct Pipeline {
    shards: Vec<Shard>,
    enc_cfg: EncoderConfig,
    out: VecDeque<Outgoing>,
    stats: PipelineStats,
}

impl Pipeline {
    /// One shard per aggregator replica name (its address as configured or resolved).
    pub fn new(enc_cfg: EncoderConfig, replicas: &[String]) -> Result<Pipeline, EncodeError> {
        let mut p = Pipeline {
            shards: Vec::new(),
            enc_cfg,
            out: VecDeque::new(),
            stats: PipelineStats::default(),
        };
        for r in replicas {
            p.shards.push(p.new_shard(r.clone())?);
        }
        Ok(p)
    }

    fn new_shard(&self, name: String) -> Result<Shard, EncodeError> {
        let mut enc = Encoder::new(self.enc_cfg.clone())?;
        for l in [Layout::AgentV4, Layout::AgentV6] {
            enc.add_template(l.template_id(), l.fields())?;
        }
        Ok(Shard {
            name,
            enc,
            pending: VecDeque::new(),
        })
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn shard_names(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| s.name.as_str())
    }

    /// The replica a flow goes to.
    pub fn shard_of(&self, key: &FlowKey) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        rendezvous(self.shards.iter().map(|s| s.name.as_str()), key)
    }

    /// A new transport session to shard `i`: whatever was built for the old session (queued
    /// messages, the message under construction) can no longer be sent — its exports are
    /// returned for the caller to nack — and templates go first again.
    pub fn new_session(&mut self, i: usize, now: Timestamp) -> Vec<ExportId> {
        let Some(s) = self.shards.get_mut(i) else {
            return Vec::new();
        };
        s.enc.flush(now);
        self.collect(i);
        let mut stale = Vec::new();
        self.out.retain(|o| {
            if o.shard == i {
                stale.extend_from_slice(&o.exports);
                false
            } else {
                true
            }
        });
        self.shards[i].enc.reset_session();
        stale
    }

    /// Everything the exporter has to send, encoded, and finished messages queued.
    /// Encodes records the exporter has due until `max_queued` finished messages wait here, then
    /// finishes the messages under construction. Returns whether it stopped with records still
    /// due (call again once messages have been taken): bounding what is encoded ahead of the
    /// transport keeps memory flat when a million connections fall due at once.
    pub fn pump(&mut self, now: Timestamp, exporter: &mut FlowExporter, max_queued: usize) -> bool {
        let mut more = false;
        loop {
            if self.out.len() >= max_queued {
                more = true;
                break;
            }
            let Some(e) = exporter.poll_record(now) else {
                break;
            };
            let i = self.shard_of(&e.record.key);
            let shard = &mut self.shards[i];
            match write_flow_record(&mut shard.enc, now, &e.record, exporter.interner()) {
                Ok(()) => {
                    shard.pending.push_back(e.id);
                    self.stats.records += 1;
                }
                Err(_) => {
                    self.stats.encode_errors += 1;
                    let _ = exporter.nack(e.id);
                }
            }
            self.collect(i);
        }
        for i in 0..self.shards.len() {
            self.shards[i].enc.flush(now);
            self.collect(i);
        }
        more
    }

    /// UDP template refresh.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for i in 0..self.shards.len() {
            self.shards[i].enc.handle_timeout(now);
            self.collect(i);
        }
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.shards
            .iter()
            .filter_map(|s| s.enc.poll_timeout())
            .min()
    }

    fn collect(&mut self, i: usize) {
        let shard = &mut self.shards[i];
        while let Some((message, n)) = shard.enc.poll_message() {
            let n = (n as usize).min(shard.pending.len());
            let exports = shard.pending.drain(..n).collect();
            self.stats.messages += 1;
            self.out.push_back(Outgoing {
                shard: i,
                message,
                exports,
            });
        }
    }

    /// The next message to send.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    /// Messages waiting.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Tells the exporter what became of a message's records: sent, or not (then their deltas go
    /// out again in a later record).
    pub fn settle(exporter: &mut FlowExporter, exports: &[ExportId], sent: bool) {
        for &id in exports {
            let _ = if sent {
                exporter.ack(id)
            } else {
                exporter.nack(id)
            };
        }
    }
}

/// Highest-random-weight choice among `replicas` for `key`.
pub fn rendezvous<'a>(replicas: impl Iterator<Item = &'a str>, key: &FlowKey) -> usize {
    // Order the endpoints so the choice does not depend on which end is called the source.
    let a = (key.src, key.src_port);
    let b = (key.dst, key.dst_port);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut best = (0usize, 0u64);
    for (i, r) in replicas.enumerate() {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(0, 0);
        r.hash(&mut h);
        lo.hash(&mut h);
        hi.hash(&mut h);
        key.proto.hash(&mut h);
        let score = h.finish();
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from(0x0a00_0000 + i).into(),
            dst: Ipv4Addr::new(10, 1, 0, 1).into(),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
        }
    }

    #[test]
    fn rendezvous_is_symmetric_balanced_and_moves_only_the_removed_replicas_flows() {
        let three = ["a:4739", "b:4739", "c:4739"];
        let two = ["a:4739", "c:4739"];
        let mut counts = [0; 3];
        let mut moved_wrongly = 0;
        for i in 0..3000 {
            let k = key(i);
            let rev = FlowKey {
                src: k.dst,
                dst: k.src,
                src_port: k.dst_port,
                dst_port: k.src_port,
                proto: k.proto,
            };
            let s3 = rendezvous(three.iter().copied(), &k);
            assert_eq!(s3, rendezvous(three.iter().copied(), &rev));
            counts[s3] += 1;
            let s2 = rendezvous(two.iter().copied(), &k);
            if three[s3] != "b:4739" && two[s2] != three[s3] {
                moved_wrongly += 1;
            }
        }
        assert_eq!(moved_wrongly, 0, "only flows of the removed replica move");
        assert!(counts.iter().all(|&c| c > 800), "balanced: {counts:?}");
    }
}
