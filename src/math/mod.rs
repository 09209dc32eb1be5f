//! The exact math of a head, with no I/O: how features become fixed-point integers
//! ([`fixed`]), the exact integer statistics A and B ([`stats`]), the solve for the weights
//! ([`solver`]), what a head is ([`spec`]), its weights ([`weights`]), the threads a computation uses ([`threads`]), the fast path's correction of them ([`woodbury`]), the sample set it
//! sums ([`samples`]), the receipts that commit to a head's state ([`receipt`]) and the buffers that hold any of these, zeroized when dropped
//! ([`secret`]). See DESIGN.md for the math.
//!
//! Everything here is a pure function of its inputs; the state dir ([`crate::store`]) persists
//! these types and the head ([`crate::head`]) composes them.

pub mod dense;
pub mod fixed;
pub mod receipt;
pub mod samples;
pub mod secret;
pub mod solver;
pub mod spec;
pub mod stats;
pub mod threads;
pub mod weights;
pub mod woodbury;
