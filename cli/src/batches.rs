//! Running a core over many inputs in chunks, with a progress bar.

use ndarray::{s, Array2, ArrayD, IxDyn};

use lethe::{Bundle, Core, Error, Head, Result};

/// Samples per core run.
const CHUNK: usize = 256;

/// The inputs in `a` as `n` rows for `bundle`'s core, after checking that `a` has exactly the
/// manifest's shape `[n, …]` or the flat form `[n, input_len]` (never silently reshaped).
pub fn inputs_of(bundle: &Bundle, a: ArrayD<f32>) -> Result<(usize, Vec<f32>)> {
    let n = bundle.input_count(a.shape())?;
    let rows = if a.is_standard_layout() {
        a.into_raw_vec_and_offset().0
    } else {
        a.iter().copied().collect()
    };
    Ok((n, rows))
}

/// The per-sample input length, after checking that `x` holds `n` samples.
pub fn check_input_len(core: &Core, x: &[f32], n: usize) -> Result<usize> {
    let per = core.input_len();
    if x.len() != n * per {
        return Err(Error::InvalidInput(format!(
            "expected {n} samples × {per} values, got {} values",
            x.len()
        )));
    }
    Ok(per)
}

/// One output of `core` (by name) over `n` inputs, as [n, width].
pub fn core_output(core: &Core, x: &[f32], n: usize, name: &str) -> Result<ArrayD<f32>> {
    let per = check_input_len(core, x, n)?;
    let bar = crate::progress::bar(n as u64, "running the core");
    let mut rows = Vec::new();
    let mut width = core
        .run(&[], 0, &[name])?
        .get(name)
        .map_or(0, |a| a.ncols());
    for start in (0..n).step_by(CHUNK) {
        let k = CHUNK.min(n - start);
        let out = core.run(&x[start * per..(start + k) * per], k, &[name])?;
        let a = out.get(name).expect("requested");
        width = a.ncols();
        rows.extend(a.iter().copied());
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    Ok(ArrayD::from_shape_vec(IxDyn(&[n, width]), rows).expect("sizes"))
}

/// A head's core over `n` inputs: (features, core logits mapped onto the head's classes).
pub fn core_features(h: &Head, x: &[f32], n: usize) -> Result<(Array2<f32>, Array2<f32>)> {
    let spec = h.spec();
    let core = h
        .core()
        .ok_or_else(|| Error::InvalidInput("head has no core".into()))?;
    let per = check_input_len(core, x, n)?;
    let bar = crate::progress::bar(n as u64, "running the core");
    let mut phi = Array2::<f32>::zeros((n, spec.dim));
    let mut z = Array2::<f32>::zeros((n, spec.num_classes()));
    for start in (0..n).step_by(CHUNK) {
        let k = CHUNK.min(n - start);
        let (p, zz) = h.core_features(&x[start * per..(start + k) * per], k)?;
        phi.slice_mut(s![start..start + k, ..]).assign(&p);
        z.slice_mut(s![start..start + k, ..]).assign(&zz);
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    Ok((phi, z))
}
