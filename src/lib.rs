//! Lethe: an embeddable inference runtime that can forget.
//!
//! A [`Core`] (an ONNX network from a model [`Bundle`]) maps inputs to features; a [`Head`] is
//! one user's linear layer on those features, trained with a quadratic loss so that learning
//! and forgetting samples are exact closed-form updates (mixed-privacy forgetting, Golatkar et
//! al., CVPR 2021). See DESIGN.md for the math and the guarantees.
//!
//! ```no_run
//! use std::sync::Arc;
//! use lethe::{Core, CoreOptions, Head, HeadOptions};
//!
//! let core = Arc::new(Core::open("models/mnist-core", &CoreOptions::default())?);
//! let head = Head::open(core.clone(), "/tmp/my-head", &HeadOptions::default())?;
//! let image = vec![0.0f32; core.input_len()];
//! head.learn(&[42], &image, &[7])?;
//! let logits = head.predict(&image, 1)?;
//! head.forget(&[42])?;
//! head.close()?;
//! # Ok::<(), lethe::Error>(())
//! ```

pub mod backend;
pub mod bundle;
pub mod cli;
pub mod core;
pub mod data;
pub mod error;
pub mod ffi;
pub mod head;
pub mod progress;
pub mod runtime;
pub mod store;

pub use crate::backend::{Backend, BackendOptions, BackendReport};
pub use crate::bundle::{Bundle, Manifest};
pub use crate::core::{Core, CoreOptions, CoreOutputs};
pub use crate::error::{Error, Result};
pub use crate::head::{Head, HeadInfo, HeadOptions, HeadSpec, Weights};
