//! Named, typed tensors: the inputs of a core, as its manifest declares them.
//!
//! A [`Tensor`] is a name, an element type ([`DType`]), a shape (the batch axis first) and the
//! values' bytes in row-major order and the machine's byte order. It borrows the caller's bytes
//! where it can (a standard-layout array view, a C caller's buffer) and otherwise owns a copy,
//! which is zeroized when dropped (G4). [`crate::bundle::Bundle::check_inputs`] checks a set of
//! them against the manifest.

use std::borrow::Cow;

use ndarray::ArrayViewD;
use zeroize::Zeroizing;

/// An element type a core input may have (the manifest's `dtype`; ONNX's names in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `float32` (FLOAT).
    Float32,
    /// `float16` (FLOAT16): IEEE 754 half precision.
    Float16,
    /// `int64` (INT64).
    Int64,
    /// `int32` (INT32).
    Int32,
    /// `uint8` (UINT8).
    Uint8,
    /// `bool` (BOOL): one byte, 0 or 1.
    Bool,
}

impl DType {
    /// Every element type, in the order the manifest documentation lists them.
    pub const ALL: [DType; 6] = [
        DType::Float32,
        DType::Float16,
        DType::Int64,
        DType::Int32,
        DType::Uint8,
        DType::Bool,
    ];

    /// The manifest's (and numpy's) name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
        }
    }

    /// The type with this manifest (or numpy) name.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Float32 | DType::Int32 => 4,
            DType::Float16 => 2,
            DType::Int64 => 8,
            DType::Uint8 | DType::Bool => 1,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust element type of a typed tensor view (see [`Tensor::from_array`]).
pub trait Element: sealed::Sealed + Copy {
    const DTYPE: DType;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i64 {}
    impl Sealed for i32 {}
    impl Sealed for u8 {}
    impl Sealed for bool {}
}

impl Element for f32 {
    const DTYPE: DType = DType::Float32;
}
impl Element for i64 {
    const DTYPE: DType = DType::Int64;
}
impl Element for i32 {
    const DTYPE: DType = DType::Int32;
}
impl Element for u8 {
    const DTYPE: DType = DType::Uint8;
}
impl Element for bool {
    const DTYPE: DType = DType::Bool;
}

/// The bytes of `values`.
fn bytes_of<T: Element>(values: &[T]) -> &[u8] {
    // SAFETY: every `Element` is a primitive without padding or invalid bit patterns for u8
    // (bool's byte is 0 or 1), so its memory is `size_of_val(values)` initialized bytes.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
}

/// A tensor's values: borrowed, or a copy zeroized when dropped.
#[derive(Clone)]
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Zeroizing<Vec<u8>>),
}

/// One named input tensor (see the module documentation).
#[derive(Clone)]
pub struct Tensor<'a> {
    name: Cow<'a, str>,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Bytes<'a>,
}

impl std::fmt::Debug for Tensor<'_> {
    // Never the values: they may be a user's data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl<'a> Tensor<'a> {
    /// A tensor over the caller's bytes (row-major, the machine's byte order). Nothing is
    /// checked here: [`crate::bundle::Bundle::check_inputs`] checks the shape, the byte length
    /// and the values against the manifest.
    pub fn from_bytes(
        name: impl Into<Cow<'a, str>>,
        dtype: DType,
        shape: &[usize],
        bytes: &'a [u8],
    ) -> Tensor<'a> {
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            bytes: Bytes::Borrowed(bytes),
        }
    }

    /// A tensor that owns its bytes, zeroized when dropped.
    pub fn owned(
        name: impl Into<Cow<'a, str>>,
        dtype: DType,
        shape: &[usize],
        bytes: Vec<u8>,
    ) -> Tensor<'a> {
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            bytes: Bytes::Owned(Zeroizing::new(bytes)),
        }
    }

    /// A tensor over a typed array view: borrowed when the view is in standard layout, else a
    /// copy in its logical (row-major) order.
    pub fn from_array<T: Element>(
        name: impl Into<Cow<'a, str>>,
        array: ArrayViewD<'a, T>,
    ) -> Tensor<'a> {
        let shape = array.shape().to_vec();
        let bytes = match array.to_slice() {
            Some(values) => Bytes::Borrowed(bytes_of(values)),
            None => {
                let mut bytes = Zeroizing::new(Vec::with_capacity(array.len() * size_of::<T>()));
                for v in array.iter() {
                    bytes.extend_from_slice(bytes_of(std::slice::from_ref(v)));
                }
                Bytes::Owned(bytes)
            }
        };
        Tensor {
            name: name.into(),
            dtype: T::DTYPE,
            shape,
            bytes,
        }
    }

    /// A tensor over a flat slice of values with this shape.
    pub fn from_slice<T: Element>(
        name: impl Into<Cow<'a, str>>,
        shape: &[usize],
        values: &'a [T],
    ) -> Tensor<'a> {
        Tensor::from_bytes(name, T::DTYPE, shape, bytes_of(values))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape, the batch axis first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values' bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(b) => b,
        }
    }

    /// Rows `start..start + len` of the batch axis, borrowed. The tensor must be checked
    /// (its byte length is the product of its shape times the element size).
    pub fn rows(&self, start: usize, len: usize) -> Tensor<'_> {
        let n = self.shape.first().copied().unwrap_or(0);
        let per = self.bytes().len().checked_div(n).unwrap_or(0);
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = len;
        }
        Tensor {
            name: Cow::Borrowed(&self.name),
            dtype: self.dtype,
            shape,
            bytes: Bytes::Borrowed(&self.bytes()[start * per..(start + len) * per]),
        }
    }
}

/// Whether an IEEE half-precision value (its bits) is finite.
pub fn f16_is_finite(bits: u16) -> bool {
    bits & 0x7c00 != 0x7c00
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    #[test]
    fn names_round_trip_and_sizes_are_onnx_sizes() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("float64"), None);
        let sizes: Vec<usize> = DType::ALL.iter().map(|d| d.size()).collect();
        assert_eq!(sizes, [4, 2, 8, 4, 1, 1]);
    }

    #[test]
    fn a_view_in_another_layout_is_copied_in_logical_order() {
        let a = Array2::from_shape_vec((2, 3).f(), vec![1i64, 4, 2, 5, 3, 6]).unwrap();
        let t = Tensor::from_array("x", a.view().into_dyn());
        let expected: Vec<u8> = (1i64..=6).flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(t.bytes(), expected);
        assert_eq!((t.dtype(), t.shape()), (DType::Int64, &[2usize, 3][..]));
        let rows = t.rows(1, 1);
        assert_eq!(rows.shape(), [1, 3]);
        assert_eq!(rows.bytes(), &expected[24..]);
    }

    #[test]
    fn half_precision_finiteness() {
        for (bits, finite) in [
            (0x3c00, true),  // 1.0
            (0x7bff, true),  // 65504, the largest
            (0x8001, true),  // a negative subnormal
            (0x7c00, false), // inf
            (0xfc00, false), // -inf
            (0x7e00, false), // NaN
        ] {
            assert_eq!(f16_is_finite(bits), finite, "{bits:#x}");
        }
    }
}
