//! drover's local lab: real servers on loopback, started and stopped by the code that
//! needs them (integration tests, benchmarks, `drover demo`).
//!
//! - [`PgPair`]: a PostgreSQL primary and a streaming standby in a temporary folder,
//!   with password (SCRAM) authentication, helpers to run SQL, pause replay, cut the
//!   standby off, and kill or restart the primary.
//! - [`K8sSim`]: a Kubernetes API simulator over HTTPS (Deployments, StatefulSets,
//!   the scale subresource, watches) with a kubeconfig of its own.
//! - [`S3Server`]: moto's server or s3s-fs on a free loopback port, with random keys.
//! - [`S3Fs`]: s3s-fs in this process (nothing to install), for `drover demo`.
//! - [`TcpProxy`]: a loopback TCP proxy a test can cut and heal (a network partition).
//!
//! Everything here is synchronous and uses the installed server binaries (found on
//! `PATH` or under `/usr/lib/postgresql/*/bin`): the lab does not depend on the plugins
//! it is used to test.

pub mod k8s;
pub mod postgres;
pub mod proxy;
pub mod s3;
pub mod s3fs;

pub use k8s::K8sSim;
pub use postgres::{LabError, Node, PgBin, PgPair};
pub use proxy::TcpProxy;
pub use s3::{S3Kind, S3Server};
pub use s3fs::S3Fs;
