//! The parts of the `drover` binary that its integration tests share: the explicit plugin
//! registry, so that in-process tests validate with exactly the actions the binary knows,
//! and the demo's two-site lab, which the reliability campaign builds for its trials.

pub mod demolab;

pub mod registry;
