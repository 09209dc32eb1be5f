//! Helpers shared by the integration tests (and, by `#[path]`, the command line's tests in
//! `cli/tests`): where things are, temp dirs, the test data, the one seeded generator; a small
//! head persisted in a state dir ([`store`]); a head over synthetic features ([`synthetic`]);
//! the GPU and its tolerances ([`cuda`]).
//!
//! Each test crate uses a subset of these, so unused ones are not dead code.
#![allow(dead_code)]

pub mod cuda;
pub mod store;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use lethe::{FixedPoint, HeadSpec};
use ndarray::{Array2, Array3, ArrayView2, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The repository root: the package's dir or, for the command line's tests in `cli/`, its
/// parent. The package's dir is `CARGO_MANIFEST_DIR` at run time (cargo sets it, and so does
/// scripts/gpu-check.sh, which runs test binaries built on another machine), else where the
/// test was built.
pub fn repo_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package
        .ancestors()
        .find(|dir| dir.join("models").is_dir())
        .unwrap_or(&package)
        .to_path_buf()
}

/// A head over features computed elsewhere (no core logits): `dim` features within ±8,
/// `classes` classes, ridge `lambda`, 16 fractional bits, targets within ±16.
pub fn detached_spec(dim: usize, classes: usize, lambda: f64) -> HeadSpec {
    let fixed = FixedPoint {
        frac_bits: 16,
        feature_max_abs: 8.0,
        target_max_abs: 16.0,
    };
    HeadSpec::detached(dim, classes, lambda, fixed).unwrap()
}

/// The tests' one generator: deterministic for a seed.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A `rows × cols` matrix of values drawn uniformly from [−`range`, `range`).
pub fn uniform(rng: &mut StdRng, rows: usize, cols: usize, range: f32) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-range..range))
}

/// A bundle under `models/`.
pub fn bundle_dir(name: &str) -> PathBuf {
    repo_root().join("models").join(name)
}

/// The Python that `scripts/setup.sh` installs (numpy, scikit-learn, onnxruntime).
pub fn python() -> PathBuf {
    let python = repo_root().join(".lethe/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup.sh first",
        python.display()
    );
    python
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lethe-test-")
        .tempdir()
        .expect("create a temp dir")
}

/// The first `n` MNIST test digits of `tests/data` as uint8 `[n, 28, 28]`.
pub fn test_digits(n: usize) -> Array3<u8> {
    let path = repo_root().join("tests/data/test_images.npy");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all = Array3::<u8>::read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        all.len_of(Axis(0)) >= n,
        "tests/data has fewer than {n} digits"
    );
    all.slice_move(ndarray::s![..n, .., ..])
}

/// The mnist-core input for `n` test digits: `[n, 1, 28, 28]`, pixel p → p / 256 (its manifest).
pub fn mnist_core_input(n: usize) -> ndarray::Array4<f32> {
    test_digits(n)
        .mapv(|p| f32::from(p) / 256.0)
        .insert_axis(Axis(1))
}

/// Writes an array as `.npy`.
pub fn write_npy<A: WriteNpyExt>(path: &Path, array: &A) {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    array
        .write_npy(std::io::BufWriter::new(file))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Reads a float32 `[n, width]` `.npy`.
pub fn read_npy_2d(path: &Path) -> Array2<f32> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Array2::<f32>::read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// max |actual − reference| / max |reference|, after checking the shapes agree; infinite when
/// `actual` holds a NaN or ±Inf (`f64::max` would silently skip a NaN).
pub fn max_rel_diff(actual: ArrayView2<f32>, reference: ArrayView2<f32>) -> f64 {
    assert_eq!(actual.shape(), reference.shape(), "shapes differ");
    if actual.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = reference
        .iter()
        .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    assert!(
        scale > 0.0,
        "the reference is all zeros: nothing to compare"
    );
    let diff = actual
        .iter()
        .zip(reference.iter())
        .fold(0.0f64, |m, (&a, &r)| {
            m.max((f64::from(a) - f64::from(r)).abs())
        });
    diff / scale
}

/// Threads that call a function in a loop until [`Readers::finish`] (G6: predictions while the
/// weights change), each keeping what its calls returned.
pub struct Readers<T> {
    threads: Vec<JoinHandle<Vec<T>>>,
    done: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl<T: Send + 'static> Readers<T> {
    pub fn start(n: usize, call: impl Fn() -> T + Send + Sync + 'static) -> Readers<T> {
        let call = Arc::new(call);
        let done = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (call, done, calls) = (call.clone(), done.clone(), calls.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !done.load(Ordering::SeqCst) {
                        seen.push(call());
                        calls.fetch_add(1, Ordering::SeqCst);
                    }
                    seen
                })
            })
            .collect();
        Readers {
            threads,
            done,
            calls,
        }
    }

    /// Waits until each reader could have started a call after this point: at most one call
    /// per reader is in flight now, so it waits for twice as many calls to end.
    pub fn wait_for_new_calls(&self) {
        let after = self.calls.load(Ordering::SeqCst) + 2 * self.threads.len();
        while self.calls.load(Ordering::SeqCst) < after {
            assert!(
                !self.threads.iter().any(|t| t.is_finished()),
                "a reader failed"
            );
            std::thread::yield_now();
        }
    }

    /// Stops the readers and returns what all their calls returned.
    pub fn finish(self) -> Vec<T> {
        self.done.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// The message of an `Error::InvalidInput`; panics, naming `what`, on success or any other
/// error.
pub fn invalid_input<T: std::fmt::Debug>(result: lethe::Result<T>, what: &str) -> String {
    match result {
        Err(lethe::Error::InvalidInput(message)) => message,
        other => panic!("{what}: expected Error::InvalidInput, got {other:?}"),
    }
}
