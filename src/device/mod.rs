//! The devices the head's forward pass runs on: the CPU ([`cpu`], the reference) and a CUDA
//! GPU ([`cuda`]: the device's context, the head's f32 weights resident there, and Lethe's own
//! kernels, compiled at run time by [`nvrtc`]).
//!
//! Nothing here knows about heads, state dirs or cores: it runs logits = z + φ Wᵀ + b on given
//! weights. Which device a head uses, and the path that feeds the core's outputs straight into
//! the kernels, are chosen in [`crate::head`].

pub mod cpu;
pub mod cuda;
pub mod nvrtc;
