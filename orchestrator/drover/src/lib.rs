//! The parts of the `drover` binary that its integration tests share: the explicit plugin
//! registry, so that in-process tests validate with exactly the actions the binary knows.

pub mod registry;
