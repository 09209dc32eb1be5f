//! The `lethe` command line: state-dir commands (learn, forget, predict, …), the demo, the
//! benchmarks and the forgetting evaluation. The runtime itself is the `lethe` crate; this
//! crate owns the terminal (progress bars, logging to stderr) and the report tooling.

pub mod bench;
pub mod commands;
pub mod demo;
pub mod eval;
pub mod progress;
