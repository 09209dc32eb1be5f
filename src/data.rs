//! Reading and writing `.npy` arrays for the CLI, the demo and the tests.
//!
//! A file is checked before anything is allocated for its values: its header must be complete
//! and its declared dtype and shape must account for exactly the bytes that follow the header.
//! A small file that declares a huge array is an error, never an allocation. An `.npz` file's
//! arrays are checked the same way once read out of the archive, and an archive entry that
//! declares more bytes than its compressed data can hold is refused before it is read.

use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, ReadableElement, WritableElement, WriteNpyExt};

use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

fn npy_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {e}", path.display()))
}

/// What an `.npy` file declares, checked against its length.
struct Declared {
    /// The numpy dtype name (`float32`, `uint8`, …) or, for one Lethe does not read, the
    /// header's descriptor.
    dtype: String,
    shape: Vec<usize>,
}

/// The magic string, the version and the header length of an `.npy` file.
const PREFIX_LEN: u64 = 8;

/// Reads and checks the header of the `.npy` file `path`; the file is left at its start.
fn declared(path: &Path, file: &mut File) -> Result<Declared> {
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    declared_in(path, file, file_len)
}

/// [`declared`] for `.npy` data of `file_len` bytes in any seekable reader (`path` names it in
/// errors).
fn declared_in<R: Read + Seek>(path: &Path, file: &mut R, file_len: u64) -> Result<Declared> {
    let mut prefix = [0u8; PREFIX_LEN as usize + 4];
    let got = read_up_to(file, &mut prefix).map_err(|e| Error::io(path, e))?;
    if got < PREFIX_LEN as usize || &prefix[..6] != b"\x93NUMPY" {
        return Err(npy_err(
            path,
            "not an .npy file (no \\x93NUMPY magic string)",
        ));
    }
    let (len_bytes, header_len) = match prefix[6] {
        1 => (2, u16::from_le_bytes([prefix[8], prefix[9]]) as u64),
        2 | 3 => (
            4,
            u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes")) as u64,
        ),
        v => {
            return Err(npy_err(
                path,
                format!(".npy format version {v} is not one of 1, 2, 3"),
            ))
        }
    };
    let data_start = PREFIX_LEN + len_bytes + header_len;
    if (got as u64) < PREFIX_LEN + len_bytes || data_start > file_len {
        return Err(npy_err(
            path,
            format!(
                "truncated: the header should end at byte {data_start}, the file has {file_len} bytes"
            ),
        ));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let header =
        Header::from_reader(file).map_err(|e| npy_err(path, format!("bad header: {e}")))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let descriptor = header.type_descriptor.to_string();
    let (dtype, item) = dtype_of(descriptor.trim_matches('\''))
        .map_or((descriptor, None), |(name, size)| {
            (name.to_string(), Some(size))
        });
    let declared = Declared {
        dtype,
        shape: header.shape,
    };
    let Some(item) = item else {
        return Ok(declared);
    };
    let data_len = file_len - data_start;
    let wanted = declared
        .shape
        .iter()
        .try_fold(item, |bytes, &d| bytes.checked_mul(d as u64));
    if wanted != Some(data_len) {
        let (wanted, problem) = match wanted {
            Some(w) if w < data_len => (w.to_string(), "the header does not describe the data"),
            Some(w) => (
                w.to_string(),
                "the file is truncated or its header is wrong",
            ),
            None => (
                "over 2^64".into(),
                "the file is truncated or its header is wrong",
            ),
        };
        return Err(npy_err(
            path,
            format!(
                "the header declares {} values of shape {:?} ({wanted} bytes), but {data_len} \
                 bytes follow the header: {problem}",
                declared.dtype, declared.shape
            ),
        ));
    }
    Ok(declared)
}

fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

/// The numpy name and item size of a descriptor such as `<f4` (either byte order).
fn dtype_of(descriptor: &str) -> Option<(&'static str, u64)> {
    let code = descriptor.strip_prefix(['<', '>', '|', '='])?;
    Some(match code {
        "f4" => ("float32", 4),
        "f8" => ("float64", 8),
        "u1" => ("uint8", 1),
        "i1" => ("int8", 1),
        "u2" => ("uint16", 2),
        "i2" => ("int16", 2),
        "u4" => ("uint32", 4),
        "i4" => ("int32", 4),
        "u8" => ("uint64", 8),
        "i8" => ("int64", 8),
        "b1" => ("bool", 1),
        _ => return None,
    })
}

/// Reads a checked file as `T` (whose dtype the caller matched).
fn read_as<T: ReadableElement>(path: &Path, file: impl Read) -> Result<ArrayD<T>> {
    ArrayD::<T>::read_npy(file).map_err(|e| npy_err(path, e))
}

/// An f32 array of any shape, from a float32 or float64 file: inputs must already be
/// preprocessed as the bundle's manifest says, so other dtypes (uint8 pixels) are refused.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let mut file = open(path)?;
    let declared = declared(path, &mut file)?;
    match declared.dtype.as_str() {
        "float32" => read_as::<f32>(path, file),
        "float64" => read_as::<f64>(path, file).map(|a| a.mapv(|v| v as f32)),
        other => Err(npy_err(
            path,
            format!(
                "holds {other} values; inputs must be float32 (or float64), preprocessed as the \
                 bundle's manifest says"
            ),
        )),
    }
}

/// A 1-d integer array as u64 (any of the common integer dtypes; negatives are an error).
pub fn read_ids(path: &Path) -> Result<Vec<u64>> {
    let mut file = open(path)?;
    let declared = declared(path, &mut file)?;
    if declared.shape.len() != 1 {
        return Err(npy_err(
            path,
            format!(
                "has shape {:?}; ids and labels are a 1-d array",
                declared.shape
            ),
        ));
    }
    macro_rules! ids {
        ($t:ty) => {
            read_as::<$t>(path, file)?
                .iter()
                .map(|&v| {
                    u64::try_from(v)
                        .map_err(|_| npy_err(path, format!("value {v} is not a valid id or label")))
                })
                .collect()
        };
    }
    match declared.dtype.as_str() {
        "uint64" => ids!(u64),
        "int64" => ids!(i64),
        "uint32" => ids!(u32),
        "int32" => ids!(i32),
        "uint16" => ids!(u16),
        "int16" => ids!(i16),
        "uint8" => ids!(u8),
        "int8" => ids!(i8),
        other => Err(npy_err(
            path,
            format!("holds {other} values; ids and labels must be integers"),
        )),
    }
}

/// A uint8 array of any shape.
fn read_u8(path: &Path) -> Result<ArrayD<u8>> {
    let mut file = open(path)?;
    match declared(path, &mut file)?.dtype.as_str() {
        "uint8" => read_as::<u8>(path, file),
        other => Err(npy_err(path, format!("holds {other} values, not uint8"))),
    }
}

/// An array's values as bytes (see [`read_values`]).
pub struct Values {
    /// The numpy dtype name: `float32`, `int64`, `int32`, `uint8` or `bool`.
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    /// Row-major, the machine's byte order; zeroized when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
}

/// An array of a core input's element type (float32, int64, int32, uint8 or bool).
pub fn read_values(path: &Path) -> Result<Values> {
    let mut file = open(path)?;
    let declared = declared(path, &mut file)?;
    values_of(path, file, declared)
}

/// The largest ratio of a deflated stream's size to its compressed size (deflate's limit is
/// about 1032:1), with room for the smallest streams.
fn max_inflated(compressed: u64) -> u64 {
    compressed.saturating_mul(1032).saturating_add(1024)
}

/// The arrays of an `.npz` file (numpy's `savez` or `savez_compressed`) with their names (a
/// name's `.npy` suffix dropped, as numpy does), each of a core input's element type (see
/// [`read_values`]). The zip reader's own buffers (decompression) are freed without being
/// zeroized; every array's bytes are zeroized when dropped.
pub fn read_npz(path: &Path) -> Result<Vec<(String, Values)>> {
    let file = open(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let listing = file.try_clone().map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| npy_err(path, format!("not a readable .npz (zip) file: {e}")))?;
    // The zip reader keeps one entry per name (the last): a name listed twice shows only in
    // the central directory itself.
    let listed = central_entries(&listing, zip.central_directory_start(), file_len)
        .map_err(|e| Error::io(path, e))?;
    if listed != zip.len() {
        return Err(npy_err(
            path,
            format!(
                "its directory lists {listed} entries under {} names: it holds an array twice",
                zip.len()
            ),
        ));
    }
    let mut arrays: Vec<(String, Values)> = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| npy_err(path, format!("archive entry {i}: {e}")))?;
        let name = entry.name();
        let name = name.strip_suffix(".npy").unwrap_or(name).to_string();
        let what = PathBuf::from(format!("{} (array {name:?})", path.display()));
        if arrays.iter().any(|(n, _)| *n == name) {
            return Err(npy_err(path, format!("holds two arrays named {name:?}")));
        }
        let (size, compressed) = (entry.size(), entry.compressed_size());
        if compressed > file_len || size > max_inflated(compressed) {
            return Err(npy_err(
                &what,
                format!(
                    "the archive declares {size} bytes from {compressed} compressed bytes in a \
                     file of {file_len}: it is corrupt"
                ),
            ));
        }
        let len = usize::try_from(size)
            .map_err(|_| npy_err(&what, format!("{size} bytes do not fit in memory")))?;
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        entry
            .read_exact(&mut bytes)
            .map_err(|e| npy_err(&what, format!("unreadable: {e}")))?;
        // Reading to the end makes the zip reader check the entry's CRC-32.
        let mut rest = [0u8; 1];
        match entry.read(&mut rest) {
            Ok(0) => {}
            Ok(_) => {
                return Err(npy_err(
                    &what,
                    format!("holds more than the {size} bytes the archive declares"),
                ))
            }
            Err(e) => return Err(npy_err(&what, format!("unreadable: {e}"))),
        }
        let mut data = Cursor::new(&bytes[..]);
        let declared = declared_in(&what, &mut data, size)?;
        arrays.push((name, values_of(&what, data, declared)?));
    }
    Ok(arrays)
}

/// How many entries a zip's central directory lists from `start`: its file headers (signature
/// `PK\x01\x02`, 46 bytes, then the name, extra field and comment), counted until something
/// else follows.
fn central_entries(file: &File, start: u64, file_len: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    const HEADER: u64 = 46;
    let (mut at, mut count) = (start, 0);
    let mut header = [0u8; HEADER as usize];
    while at + HEADER <= file_len {
        file.read_exact_at(&mut header, at)?;
        if header[..4] != *b"PK\x01\x02" {
            break;
        }
        let len = |i: usize| u64::from(u16::from_le_bytes([header[i], header[i + 1]]));
        at += HEADER + len(28) + len(30) + len(32);
        count += 1;
    }
    Ok(count)
}

/// The values of checked `.npy` data (see [`read_values`]).
fn values_of<R: Read>(path: &Path, file: R, declared: Declared) -> Result<Values> {
    macro_rules! values {
        ($t:ty, $name:literal) => {{
            let mut a = read_as::<$t>(path, file)?;
            let mut bytes = Zeroizing::new(Vec::with_capacity(a.len() * size_of::<$t>()));
            for v in a.iter() {
                bytes.extend_from_slice(&v.to_ne_bytes());
            }
            scrub(&mut a);
            Ok(Values {
                dtype: $name,
                shape: declared.shape,
                bytes,
            })
        }};
    }
    match declared.dtype.as_str() {
        "float32" => values!(f32, "float32"),
        "int64" => values!(i64, "int64"),
        "int32" => values!(i32, "int32"),
        "uint8" => values!(u8, "uint8"),
        "bool" => {
            let mut a = read_as::<bool>(path, file)?;
            let bytes = Zeroizing::new(a.iter().map(|&b| u8::from(b)).collect());
            scrub(&mut a);
            Ok(Values {
                dtype: "bool",
                shape: declared.shape,
                bytes,
            })
        }
        other => Err(npy_err(
            path,
            format!("holds {other} values; a core input is float32, int64, int32, uint8 or bool"),
        )),
    }
}

/// Zeroizes an array read from a file once its values are copied (G4).
fn scrub<T: zeroize::DefaultIsZeroes>(a: &mut ArrayD<T>) {
    if let Some(values) = a.as_slice_memory_order_mut() {
        values.zeroize();
    }
}

/// A UTF-8 text file as lines, one text per line: split at LF with one trailing CR dropped
/// (Rust's `str::lines`); zeroized when dropped.
pub fn read_lines(path: &Path) -> Result<Zeroizing<Vec<String>>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        Error::InvalidInput(format!(
            "{}: not UTF-8 (at byte {})",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    Ok(Zeroizing::new(text.lines().map(str::to_string).collect()))
}

/// Writes an array as `.npy`.
pub fn write<T: WritableElement>(path: &Path, a: &ArrayD<T>) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    a.write_npy(std::io::BufWriter::new(f))
        .map_err(|e| npy_err(path, e))
}

/// An owned array from a shape and data.
pub fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("shape matches data")
}

/// A labelled MNIST subset as bundled in `tests/data` (uint8 images `[n, 28, 28]`).
#[derive(Debug, Clone)]
pub struct Digits {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
}

impl Digits {
    /// Reads `<dir>/<split>_images.npy` and `<dir>/<split>_labels.npy`.
    pub fn read(dir: &Path, split: &str) -> Result<Digits> {
        let images_path = dir.join(format!("{split}_images.npy"));
        let images = read_u8(&images_path)?;
        let labels: Vec<u32> = read_ids(&dir.join(format!("{split}_labels.npy")))?
            .into_iter()
            .map(|l| l as u32)
            .collect();
        if images.shape().len() != 3 || images.shape()[0] != labels.len() {
            return Err(npy_err(
                &images_path,
                format!(
                    "expected [n, 28, 28] images for {} labels, got {:?}",
                    labels.len(),
                    images.shape()
                ),
            ));
        }
        Ok(Digits {
            images: images.iter().copied().collect(),
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The mnist-core input for the given rows: pixel k becomes k / 256 (bit-exactly the
    /// floats of the MNIST pickle the core was trained on).
    pub fn inputs(&self, rows: &[usize]) -> Vec<f32> {
        let per = self.images.len() / self.len().max(1);
        rows.iter()
            .flat_map(|&r| self.images[r * per..(r + 1) * per].iter())
            .map(|&k| k as f32 / 256.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `.npy` file (format 1.0) with this descriptor and shape, followed by `data`.
    fn npy(dir: &Path, descr: &str, shape: &str, data: &[u8]) -> std::path::PathBuf {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        let path = dir.join(format!("a{}.npy", bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn message(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("should be refused").to_string()
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_what_numpy_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = npy(
            dir.path(),
            "<f4",
            "(2, 3)",
            &f32_bytes(&[1., 2., 3., 4., 5., 6.]),
        );
        let a = read_f32(&path).unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            [1., 2., 3., 4., 5., 6.]
        );
        let f8: Vec<u8> = [0.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a = read_f32(&npy(dir.path(), "<f8", "(2,)", &f8)).unwrap();
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), [0.5, -2.0]);
        let ids: Vec<u8> = [7i64, 9, 11].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            read_ids(&npy(dir.path(), "<i8", "(3,)", &ids)).unwrap(),
            [7, 9, 11]
        );
        assert_eq!(
            read_ids(&npy(dir.path(), "|u1", "(2,)", &[3, 4])).unwrap(),
            [3, 4]
        );
    }

    /// An `.npz` of (name, `.npy` bytes) entries, stored uncompressed as numpy's `savez` does.
    fn npz(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        use std::io::Write;
        let path = dir.join("a.npz");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    #[test]
    fn npz_arrays_are_checked_like_npy_files_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let values = [7i64, 9, 11, 13];
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let good = std::fs::read(npy(dir.path(), "<i8", "(2, 2)", &le)).unwrap();
        let mask = std::fs::read(npy(dir.path(), "|b1", "(2,)", &[1, 0])).unwrap();
        let arrays = read_npz(&npz(dir.path(), &[("ids.npy", &good), ("mask", &mask)])).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ids", "mask"]);
        let (ids, mask) = (&arrays[0].1, &arrays[1].1);
        assert_eq!((ids.dtype, ids.shape.as_slice()), ("int64", &[2, 2][..]));
        let ne: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(*ids.bytes, ne);
        assert_eq!((mask.dtype, mask.bytes.as_slice()), ("bool", &[1u8, 0][..]));

        // An array whose header declares 10^12 values over 32 bytes.
        let huge = std::fs::read(npy(dir.path(), "<i8", "(1000000000000,)", &le)).unwrap();
        let m = message(read_npz(&npz(dir.path(), &[("x.npy", &huge)])).map(drop));
        assert!(
            m.contains("(array \"x\")") && m.contains("32 bytes follow the header"),
            "{m}"
        );
        // An archive entry that declares 2 GB from its 160 stored bytes, in both of the zip's
        // headers: refused before its bytes are allocated.
        let path = npz(dir.path(), &[("x.npy", &good)]);
        let mut bytes = std::fs::read(&path).unwrap();
        let central = bytes
            .windows(4)
            .position(|w| w == b"PK\x01\x02")
            .expect("a central directory header");
        let lie = 0x7fff_ffffu32.to_le_bytes();
        bytes[22..26].copy_from_slice(&lie);
        bytes[central + 24..central + 28].copy_from_slice(&lie);
        std::fs::write(&path, bytes).unwrap();
        let m = message(read_npz(&path).map(drop));
        assert!(
            m.contains("2147483647 bytes") && m.contains("corrupt"),
            "{m}"
        );
    }

    /// Two entries of one name (the zip reader shows only the last) are refused, as are two
    /// names for one array (`x` and `x.npy`).
    #[test]
    fn an_npz_holding_an_array_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = std::fs::read(npy(dir.path(), "<i8", "(1,)", &1i64.to_le_bytes())).unwrap();
        let two = std::fs::read(npy(dir.path(), "<i8", "(1,)", &2i64.to_le_bytes())).unwrap();
        let path = npz(dir.path(), &[("x.npy", &one), ("y.npy", &two)]);
        assert_eq!(read_npz(&path).unwrap().len(), 2);
        // Renamed in both its local and its central header (stored: no checksum over names).
        let mut bytes = std::fs::read(&path).unwrap();
        let at: Vec<usize> = bytes
            .windows(5)
            .enumerate()
            .filter(|(_, w)| w == b"y.npy")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(at.len(), 2, "the name in both headers");
        for i in at {
            bytes[i] = b'x';
        }
        std::fs::write(&path, bytes).unwrap();
        let m = message(read_npz(&path).map(drop));
        assert!(m.contains("holds an array twice"), "{m}");
        let m = message(read_npz(&npz(dir.path(), &[("x", &one), ("x.npy", &two)])).map(drop));
        assert!(m.contains("holds two arrays named \"x\""), "{m}");
    }

    #[test]
    fn a_huge_declared_shape_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        // 31 KB of data for a declared 10^12 × 784 floats: reading it would abort the process.
        let data = vec![0u8; 31 * 1024];
        for (descr, shape) in [
            ("<f4", "(1000000000000, 1, 28, 28)"),
            ("<i8", "(1000000000000,)"),
            ("|u1", "(1000000000000, 28, 28)"),
            ("<f4", "(18446744073709551615, 18446744073709551615)"),
        ] {
            let path = npy(dir.path(), descr, shape, &data);
            let read = (read_f32(&path).map(drop), read_ids(&path).map(drop));
            for m in [message(read.0), message(read.1)] {
                assert!(
                    m.contains("declares") && m.contains("31744 bytes follow the header"),
                    "{m}"
                );
            }
        }
        let path = npy(dir.path(), "|u1", "(1000000000000, 28, 28)", &data);
        assert!(message(read_u8(&path)).contains("truncated"));
    }

    #[test]
    fn truncated_and_lying_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let whole = npy(dir.path(), "<f4", "(4, 2)", &f32_bytes(&[0.5; 8]));
        let bytes = std::fs::read(&whole).unwrap();
        // Cut in the data, in the header, and in the prefix.
        for (cut, expect) in [
            (
                bytes.len() - 3,
                "the file is truncated or its header is wrong",
            ),
            (
                40,
                "truncated: the header should end at byte 128, the file has 40 bytes",
            ),
            (9, "truncated"),
            (3, "not an .npy file"),
        ] {
            let path = dir.path().join(format!("cut{cut}.npy"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let m = message(read_f32(&path));
            assert!(m.contains(expect), "cut at {cut}: {m}");
        }
        // More data than the header declares.
        let m = message(read_f32(&npy(
            dir.path(),
            "<f4",
            "(3,)",
            &f32_bytes(&[1.0; 4]),
        )));
        assert!(m.contains("(12 bytes), but 16 bytes follow"), "{m}");
        // A header length that points past the end of the file.
        let mut lying = bytes.clone();
        lying[8..10].copy_from_slice(&60000u16.to_le_bytes());
        let path = dir.path().join("lying.npy");
        std::fs::write(&path, lying).unwrap();
        assert!(message(read_ids(&path)).contains("truncated"));
    }

    #[test]
    fn inputs_must_be_floats_and_ids_integers() {
        let dir = tempfile::tempdir().unwrap();
        let pixels = npy(dir.path(), "|u1", "(1, 2, 2)", &[0, 255, 128, 7]);
        let m = message(read_f32(&pixels));
        assert!(
            m.contains("holds uint8 values; inputs must be float32"),
            "{m}"
        );
        let floats = npy(dir.path(), "<f8", "(2,)", &[0; 16]);
        let m = message(read_ids(&floats));
        assert!(
            m.contains("holds float64 values; ids and labels must be integers"),
            "{m}"
        );
        let matrix = npy(dir.path(), "<i8", "(1, 2)", &[0; 16]);
        assert!(message(read_ids(&matrix)).contains("1-d"));
        let odd = npy(dir.path(), "<c8", "(1,)", &[0; 8]);
        assert!(message(read_f32(&odd)).contains("holds '<c8' values"));
    }
}
