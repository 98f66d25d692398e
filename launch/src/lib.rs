//! The `rudder` command line: the one place that wires the crates together.

pub mod cli;
