//! Kubernetes informers feeding flowcore's metadata index.
