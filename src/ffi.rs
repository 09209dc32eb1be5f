//! The C API (see ffi/lethe.h).
