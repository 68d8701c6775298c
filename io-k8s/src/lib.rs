//! Kubernetes metadata for flowlens: informers that watch the API server, and a static
//! `--metadata FILE` loader, both producing flowcore [`MetadataUpdate`]s for the agent's
//! `MetadataIndex`.
//!
//! Layers, one way: k8s-openapi objects → [`convert`] (the only code that reads API types) →
//! [`services`] (joins Services with their EndpointSlices) → updates. [`informers`] feeds that
//! from kube watchers; [`static_metadata`] from a YAML file of the same objects.
//!
//! [`MetadataUpdate`]: flowcore::metadata::MetadataUpdate

pub mod convert;
pub mod informers;
pub mod services;
pub mod static_metadata;

pub use informers::{InformerConfig, InformerHandle, Informers, Kind, KindStats, PodScope};
pub use static_metadata::{StaticError, StaticMetadata};
