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
//!
//! # Layers
//! Modules form layers; each imports only those below it (tests/layers.rs checks this and that
//! no two modules import each other, directly or through others):
//!
//! 0. [`error`]
//! 1. [`bundle`], [`runtime`] (shared libraries), [`data`] (`.npy`), [`placement`]
//! 2. [`math`]: fixed point, exact statistics, solver, spec, weights, samples (no I/O)
//! 3. [`device`]: the CPU and CUDA forward passes, CUDA context, NVRTC
//! 4. [`core`] (ONNX Runtime) and [`store`] (the state dir)
//! 5. [`head`]: composes math, store, core and device
//! 6. [`ffi`]: the C API

pub mod bundle;
pub mod core;
pub mod data;
pub mod device;
pub mod error;
pub mod ffi;
pub mod head;
pub mod math;
pub mod placement;
pub mod runtime;
pub mod store;

pub use crate::bundle::{Bundle, Manifest};
pub use crate::core::{Core, CoreOptions, CoreOutputs};
pub use crate::error::{Error, Result};
pub use crate::head::{Head, HeadInfo, HeadOptions, VerifyReport};
pub use crate::math::fixed::FixedPoint;
pub use crate::math::receipt::Receipt;
pub use crate::math::spec::HeadSpec;
pub use crate::math::weights::{ServedWeights, Weights};
pub use crate::placement::{Backend, BackendOptions, BackendReport, Placement};
pub use crate::store::StateKey;
