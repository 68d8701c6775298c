//! Linux IO for flowlens: conntrack over netlink (dump, destroy events, zone filter) and sysctl
//! checks. Parses straight into `flowcore::model::ConntrackEntry`.
