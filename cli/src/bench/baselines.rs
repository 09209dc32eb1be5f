//! The baselines Lethe is measured against: a bare ONNX Runtime session of the same core, the
//! head refitted in closed form from the stored features, and the head re-solved from f64
//! sufficient statistics kept in memory.

use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, Mat, MatRef, Par};
use ndarray::{ArrayD, IxDyn};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use lethe::bundle::tensor::{DType, Tensor};
use lethe::math::solver;
use lethe::{runtime, Bundle, Error, Result, Weights};

/// A bare ONNX Runtime session of a bundle's core, as an application without Lethe would run.
pub fn bare_session(bundle: &Bundle, threads: usize) -> Result<Session> {
    let rt = runtime::ensure_loaded(None)?;
    let mut builder = Session::builder(&rt.env)?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(ort::Error::from)?;
    }
    Ok(builder.commit_from_file(bundle.core_path())?)
}

/// One bare run: feed the batch, read every output (as views, no copies).
pub fn bare_run(session: &mut Session, bundle: &Bundle, input: &[f32], n: usize) -> Result<()> {
    let m = &bundle.manifest;
    let shape = bundle.input_shape(n);
    let view = ndarray::ArrayViewD::from_shape(shape, input)
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let outputs = session
        .run(ort::inputs![m.inputs[0].name.as_str() => TensorRef::from_array_view(view)?])?;
    for (_, value) in outputs.iter() {
        std::hint::black_box(value.try_extract_array::<f32>()?);
    }
    Ok(())
}

/// One named core input as an application holds it: an array of its element type.
pub enum BareInput {
    Int64(String, ArrayD<i64>),
    Int32(String, ArrayD<i32>),
}

/// The token tensors of a text core as arrays (copied once, before any timing).
pub fn bare_inputs(tensors: &[Tensor<'_>]) -> Result<Vec<BareInput>> {
    tensors
        .iter()
        .map(|t| {
            let shape = IxDyn(t.shape());
            let name = t.name().to_string();
            let bad = |e: ndarray::ShapeError| Error::InvalidInput(e.to_string());
            match t.dtype() {
                DType::Int64 => {
                    let v = t
                        .bytes()
                        .chunks_exact(8)
                        .map(|c| i64::from_ne_bytes(c.try_into().expect("chunks of 8 bytes")));
                    let a = ArrayD::from_shape_vec(shape, v.collect()).map_err(bad)?;
                    Ok(BareInput::Int64(name, a))
                }
                DType::Int32 => {
                    let v = t
                        .bytes()
                        .chunks_exact(4)
                        .map(|c| i32::from_ne_bytes(c.try_into().expect("chunks of 4 bytes")));
                    let a = ArrayD::from_shape_vec(shape, v.collect()).map_err(bad)?;
                    Ok(BareInput::Int32(name, a))
                }
                other => Err(Error::InvalidInput(format!(
                    "the bench feeds int64 or int32 token tensors to a bare session, not {}",
                    other.name()
                ))),
            }
        })
        .collect()
}

/// One bare run on named inputs: feed them (as views, no copies), read every output.
pub fn bare_run_inputs(session: &mut Session, inputs: &[BareInput]) -> Result<()> {
    let values = inputs
        .iter()
        .map(|input| {
            Ok(match input {
                BareInput::Int64(name, a) => (
                    name.as_str(),
                    SessionInputValue::from(TensorRef::from_array_view(a.view())?),
                ),
                BareInput::Int32(name, a) => (
                    name.as_str(),
                    SessionInputValue::from(TensorRef::from_array_view(a.view())?),
                ),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = session.run(values)?;
    for (_, value) in outputs.iter() {
        std::hint::black_box(value.try_extract_array::<f32>()?);
    }
    Ok(())
}

/// The strongest baseline: the head refitted in closed form from the stored features, in f64.
/// The two products A = XᵀX (lower triangle) and B = XᵀT take almost all the time; they run on
/// every core, each thread one contiguous block of rows with faer's sequential GEMM, and the
/// blocks' sums are added. (faer's own rayon-parallel GEMM was several times slower than this
/// for tall, thin X on this 2-core machine, and slower than one thread when the machine was
/// busy.) The Cholesky factorization and solve, O(p³) with p ≤ 2049, take a few percent and run
/// sequentially.
pub fn refit(x: MatRef<'_, f64>, t: MatRef<'_, f64>, lambda: f64) -> Result<Mat<f64>> {
    let (a, b) = products(x, t);
    solve(&a, b, lambda)
}

/// A = XᵀX (lower triangle) and B = XᵀT on every core (see [`refit`]).
fn products(x: MatRef<'_, f64>, t: MatRef<'_, f64>) -> (Mat<f64>, Mat<f64>) {
    let (n, p) = (x.nrows(), x.ncols());
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = n.div_ceil(threads).max(1);
    let parts: Vec<(Mat<f64>, Mat<f64>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..n.div_ceil(per))
            .map(|i| {
                let rows = per.min(n - i * per);
                let (xs, ts) = (x.subrows(i * per, rows), t.subrows(i * per, rows));
                scope.spawn(move || {
                    let mut a = Mat::<f64>::zeros(p, p);
                    faer::linalg::matmul::triangular::matmul(
                        a.as_mut(),
                        BlockStructure::TriangularLower,
                        Accum::Replace,
                        xs.transpose(),
                        BlockStructure::Rectangular,
                        xs,
                        BlockStructure::Rectangular,
                        1.0,
                        Par::Seq,
                    );
                    let mut b = Mat::<f64>::zeros(p, ts.ncols());
                    faer::linalg::matmul::matmul(
                        b.as_mut(),
                        Accum::Replace,
                        xs.transpose(),
                        ts,
                        1.0,
                        Par::Seq,
                    );
                    (a, b)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("refit worker"))
            .collect()
    });
    let mut a = Mat::<f64>::zeros(p, p);
    let mut b = Mat::<f64>::zeros(p, t.ncols());
    for (pa, pb) in &parts {
        a += pa;
        b += pb;
    }
    (a, b)
}

/// Θ = (A + λI)⁻¹ B from the lower triangle of A: Cholesky of a copy, then the two triangular
/// solves (faer, sequential).
fn solve(a: &Mat<f64>, b: Mat<f64>, lambda: f64) -> Result<Mat<f64>> {
    let mut l = a.clone();
    for j in 0..l.nrows() {
        l[(j, j)] += lambda;
    }
    solver::cholesky_in_place(&mut l)
        .map_err(|_| Error::Limit("XᵀX + λI is not positive definite".into()))?;
    let mut theta = b;
    solver::solve_in_place(&l, &mut theta);
    Ok(theta)
}

/// The baseline a competent engineer would build for forgetting: the sufficient statistics
/// A = XᵀX and B = XᵀT kept in memory in f64, and on each forget of k samples A and B
/// downdated by their rows (O(k·p²)), then A + λI factored by Cholesky and solved (O(p³)).
/// Not exact (f64 sums depend on the order of changes), but no O(n) work per forget.
pub struct StatsResolve {
    a: Mat<f64>,
    b: Mat<f64>,
    lambda: f64,
}

impl StatsResolve {
    /// The statistics of the samples X (n × p, augmented) with targets T.
    pub fn new(x: MatRef<'_, f64>, t: MatRef<'_, f64>, lambda: f64) -> StatsResolve {
        let (a, b) = products(x, t);
        StatsResolve { a, b, lambda }
    }

    /// Forgets the samples `x` (k × p) with targets `t` and returns the new weights Θ.
    pub fn forget(&mut self, x: MatRef<'_, f64>, t: MatRef<'_, f64>) -> Result<Mat<f64>> {
        self.change(x, t, -1.0);
        solve(&self.a, self.b.clone(), self.lambda)
    }

    /// Learns the samples back (not timed).
    pub fn learn(&mut self, x: MatRef<'_, f64>, t: MatRef<'_, f64>) {
        self.change(x, t, 1.0);
    }

    fn change(&mut self, x: MatRef<'_, f64>, t: MatRef<'_, f64>, sign: f64) {
        faer::linalg::matmul::triangular::matmul(
            self.a.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            x.transpose(),
            BlockStructure::Rectangular,
            x,
            BlockStructure::Rectangular,
            sign,
            Par::Seq,
        );
        faer::linalg::matmul::matmul(
            self.b.as_mut(),
            Accum::Add,
            x.transpose(),
            t,
            sign,
            Par::Seq,
        );
    }
}

/// max |Θ_refit − Θ_Lethe| / max |Θ_Lethe|.
pub fn agreement_with(w: &Weights, theta: &Mat<f64>, d: usize) -> f64 {
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (k, row) in w.w.rows().into_iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            diff = diff.max((v - theta[(j, k)]).abs());
            scale = scale.max(v.abs());
        }
        diff = diff.max((w.b[k] - theta[(d, k)]).abs());
        scale = scale.max(w.b[k].abs());
    }
    diff / scale
}
