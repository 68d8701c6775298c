//! `--metadata FILE`: Pods, Nodes, Services, EndpointSlices, Namespaces and NetworkPolicies from
//! a YAML file, for running outside Kubernetes and for tests.
//!
//! The file holds real Kubernetes objects, so `kubectl get pods,nodes,svc,... -A -o yaml > FILE`
//! makes one: one or more YAML documents (separated by `---`), each either a single object with
//! `apiVersion` and `kind`, or a `kind: List` (what kubectl prints) whose `items` are objects.
//! Objects go through the same [`crate::convert`] functions and Service ⋈ EndpointSlice join as
//! the informers. Other kinds (Deployments, ConfigMaps, … that `kubectl get all` adds) are
//! listed in [`StaticMetadata::ignored`], not errors.
//!
//! Errors name the file, the document (1-based), the item of a List, the object
//! (`Pod demo/web-1`) and the bad field.

use std::fmt;
use std::path::Path;

use flowcore::metadata::{MetadataIndex, MetadataUpdate};
use flowcore::model::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::convert;
use crate::services::ServiceJoin;

/// Where in the file an object sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// 1-based YAML document number.
    pub document: usize,
    /// 0-based index in a List's `items`.
    pub item: Option<usize>,
    /// `Kind namespace/name` as far as it could be read.
    pub object: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        write!(f, " ({})", self.object)
    }
}

/// Why a metadata file could not be loaded.
#[derive(Debug, Error)]
pub enum StaticError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error(
        "{file}: {at}: {message} (expected Kubernetes objects with apiVersion and kind, or a kind: List with items)"
    )]
    Shape {
        file: String,
        at: Box<Location>,
        message: String,
    },
    /// The object does not deserialize as its Kubernetes type (`field` is the JSON path).
    #[error("{file}: {at}: field {field}: {message}")]
    Field {
        file: String,
        at: Box<Location>,
        field: String,
        message: String,
    },
    /// The object deserialized but its content is unusable.
    #[error("{file}: {at}: {source}")]
    Convert {
        file: String,
        at: Box<Location>,
        #[source]
        source: convert::ConvertError,
    },
}

/// A loaded metadata file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticMetadata {
    /// Apply in order to a `MetadataIndex`.
    pub updates: Vec<MetadataUpdate>,
    /// Objects of kinds flowlens does not use, as `Kind namespace/name`.
    pub ignored: Vec<String>,
}

impl StaticMetadata {
    /// Applies every update to `index` as observed at `now`.
    pub fn apply_to(self, index: &mut MetadataIndex, now: Timestamp) {
        for u in self.updates {
            index.apply(now, u);
        }
    }
}

/// Reads and converts `path`.
pub fn load(path: &Path) -> Result<StaticMetadata, StaticError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StaticError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text)
}

/// Converts YAML `text`; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<StaticMetadata, StaticError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| StaticError::Yaml {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let mut loader = Loader {
        file,
        join: ServiceJoin::new(),
        out: StaticMetadata::default(),
    };
    for (d, doc) in docs.into_iter().enumerate() {
        let document = d + 1;
        if doc.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
            let Some(items) = doc.get("items").and_then(Value::as_array) else {
                return Err(loader.shape(
                    Location {
                        document,
                        item: None,
                        object: kind.to_string(),
                    },
                    "a List needs an items array",
                ));
            };
            for (i, item) in items.iter().enumerate() {
                loader.object(document, Some(i), item.clone())?;
            }
        } else {
            loader.object(document, None, doc)?;
        }
    }
    Ok(loader.out)
}

struct Loader<'a> {
    file: &'a str,
    join: ServiceJoin,
    out: StaticMetadata,
}

fn describe(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

impl Loader<'_> {
    fn shape(&self, at: Location, message: &str) -> StaticError {
        StaticError::Shape {
            file: self.file.to_string(),
            at: Box::new(at),
            message: message.to_string(),
        }
    }

    fn typed<T: DeserializeOwned>(&self, at: &Location, v: Value) -> Result<T, StaticError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            StaticError::Field {
                file: self.file.to_string(),
                at: Box::new(at.clone()),
                field,
                message: e.into_inner().to_string(),
            }
        })
    }

    fn object(
        &mut self,
        document: usize,
        item: Option<usize>,
        v: Value,
    ) -> Result<(), StaticError> {
        let at = Location {
            document,
            item,
            object: describe(&v),
        };
        if !v.is_object() {
            return Err(self.shape(at, "not a mapping"));
        }
        let Some(kind) = v.get("kind").and_then(Value::as_str).map(str::to_string) else {
            return Err(self.shape(at, "missing kind"));
        };
        let conv = |e| StaticError::Convert {
            file: self.file.to_string(),
            at: Box::new(at.clone()),
            source: e,
        };
        let update = match kind.as_str() {
            "Pod" => convert::pod(&self.typed::<Pod>(&at, v)?).map(MetadataUpdate::Pod),
            "Node" => convert::node(&self.typed::<Node>(&at, v)?).map(MetadataUpdate::Node),
            "Namespace" => convert::namespace_info(&self.typed::<Namespace>(&at, v)?)
                .map(MetadataUpdate::Namespace),
            "NetworkPolicy" => convert::network_policy(&self.typed::<NetworkPolicy>(&at, v)?)
                .map(MetadataUpdate::Policy),
            "Service" => {
                let s = convert::service(&self.typed::<Service>(&at, v)?).map_err(conv)?;
                let u = self.join.service(s);
                self.out.updates.push(u);
                return Ok(());
            }
            "EndpointSlice" => {
                let s =
                    convert::endpoint_slice(&self.typed::<EndpointSlice>(&at, v)?).map_err(conv)?;
                self.join.slice(s, &mut self.out.updates);
                return Ok(());
            }
            _ => {
                self.out.ignored.push(at.object);
                return Ok(());
            }
        };
        self.out.updates.push(update.map_err(conv)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
