//! The `lethe` command line: state-dir commands (learn, forget, predict, …), the demo, the
//! benchmarks and the forgetting evaluation. The runtime itself is the `lethe` crate; this
//! crate owns the terminal (progress bars, logging to stderr) and the report tooling.
//!
//! `commands` parses the command line and runs one command (`state` finds a state dir's bundle
//! and undoes a failed learn; `receipts` writes receipt files and checks them); `demo`, `bench`
//! and `eval` are the long-running ones. What more than one of them needs lives in modules of
//! its own, which import none of them: `global` (the options every command takes), `batches` (a
//! core over many inputs), `digits` (feeding MNIST digits to the bundled cores), `tweets` (the
//! labelled tweets for the text bundle), `logits`, `harness` (timing), `units` (how reports
//! show numbers), `scratch` (scratch folders), `python` (the project's Python scripts) and
//! `progress`.

pub mod batches;
pub mod bench;
pub mod commands;
pub mod demo;
pub mod digits;
pub mod eval;
pub mod global;
pub mod harness;
pub mod logits;
pub mod progress;
pub mod python;
pub mod receipts;
pub mod scratch;
pub mod state;
pub mod tweets;
pub mod units;
