//! Named scenarios: a cluster shape, a transport and a set of faults, all drawn from the seed.

use std::fmt;

use crate::cluster::{Nanos, SEC};

/// How agents send records to the aggregator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP/TLS: a record is acknowledged to the exporter only when delivered; a broken session
    /// nacks, and the next session starts with templates again.
    Tcp,
    /// UDP: fire and forget (acknowledged when sent); datagrams may be lost or reordered.
    Udp,
}

/// What goes wrong during a run. Every fault heals before the traffic stops, so the end-of-run
/// checks see a settled system.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Datagram loss probability (UDP).
    pub udp_loss: f64,
    /// Datagram delivery delay is uniform in `0..=udp_jitter` (reordering).
    pub udp_jitter: Nanos,
    /// Partitions of one Node from the aggregator.
    pub partitions: usize,
    /// Aggregator crashes (state lost).
    pub aggregator_crashes: usize,
    /// Agent restarts (exporter state lost; the Node's conntrack goes on).
    pub agent_restarts: usize,
    /// Largest Node clock offset.
    pub max_skew: Nanos,
    /// Probability that a conntrack destroy event is lost (netlink ENOBUFS).
    pub lost_events: f64,
    /// Exporter store bound per Node (`max_connections`); 0: default.
    pub exporter_capacity: usize,
    /// Aggregator `max_flows`; 0: default.
    pub aggregator_capacity: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Default,
    UdpLoss,
    Partition,
    Restart,
    Churn,
    Capacity,
    Skew,
    LostEvents,
    Chaos,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Default,
        Scenario::UdpLoss,
        Scenario::Partition,
        Scenario::Restart,
        Scenario::Churn,
        Scenario::Capacity,
        Scenario::Skew,
        Scenario::LostEvents,
        Scenario::Chaos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Default => "default",
            Scenario::UdpLoss => "udp-loss",
            Scenario::Partition => "partition",
            Scenario::Restart => "restart",
            Scenario::Churn => "churn",
            Scenario::Capacity => "capacity",
            Scenario::Skew => "skew",
            Scenario::LostEvents => "lost-events",
            Scenario::Chaos => "chaos",
        }
    }

    pub fn about(self) -> &'static str {
        match self {
            Scenario::Default => "TCP transport, no faults, light Pod churn",
            Scenario::UdpLoss => "UDP transport with datagram loss and reordering",
            Scenario::Partition => "Nodes partitioned from the aggregator for seconds to a minute",
            Scenario::Restart => "aggregator crashes and agent restarts (state lost)",
            Scenario::Churn => "heavy Pod churn with IP reuse and 5-tuple reuse",
            Scenario::Capacity => "exporter and aggregator stores at capacity",
            Scenario::Skew => "Node clocks skewed by up to 2 s",
            Scenario::LostEvents => "conntrack destroy events lost",
            Scenario::Chaos => "all of the above at once",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Transport, churn (replacements per Pod per hour) and faults of the scenario.
    pub fn setup(self) -> (Transport, f64, Faults) {
        let mut f = Faults::default();
        let mut transport = Transport::Tcp;
        let mut churn = 2.0;
        let chaos = self == Scenario::Chaos;
        if self == Scenario::UdpLoss || chaos {
            transport = Transport::Udp;
            f.udp_loss = 0.05;
            f.udp_jitter = 200 * crate::cluster::MS;
        }
        if self == Scenario::Partition || chaos {
            f.partitions = 3;
        }
        if self == Scenario::Restart || chaos {
            f.aggregator_crashes = 1;
            f.agent_restarts = 2;
        }
        if self == Scenario::Churn || chaos {
            churn = 60.0;
        }
        if self == Scenario::Capacity || chaos {
            f.exporter_capacity = 24;
            f.aggregator_capacity = 40;
        }
        if self == Scenario::Skew || chaos {
            f.max_skew = 2 * SEC;
        }
        if self == Scenario::LostEvents || chaos {
            f.lost_events = 0.2;
        }
        (transport, churn, f)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
