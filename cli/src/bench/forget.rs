//! Forget: Lethe's forget on a durable and an in-memory head vs the closed-form refit, and
//! where the time of one forget call goes.

use std::path::Path;
use std::sync::Arc;

use faer::Mat;
use ndarray::Array2;
use rand::rngs::StdRng;

use super::baselines::{agreement_with, refit};
use super::plan::Plan;
use super::results::{ForgetBreakdown, ForgetRow};
use super::workloads::{synthetic_feature, synthetic_label, SYNTHETIC_LAMBDA};
use crate::harness::{median, seconds_of, time_forget};
use crate::units::fmt_secs;
use lethe::math::solver;
use lethe::math::stats::ExactStats;
use lethe::{Core, Error, Head, HeadOptions, Result};

/// Samples per learn call when filling a head.
const FILL_CHUNK: usize = 2500;

/// One (d, C) head on a synthetic bundle, grown through a list of n.
pub struct ForgetSweep<'a> {
    pub core: &'a Arc<Core>,
    pub state: &'a Path,
    pub d: usize,
    pub c: usize,
    pub seed: u64,
    /// Also time forget on an in-memory head holding the same samples.
    pub compare_memory: bool,
}

impl ForgetSweep<'_> {
    /// Learns the synthetic samples `ids` into `head`.
    pub fn learn(&self, head: &Head, ids: &[u64]) -> Result<()> {
        let phi = Array2::from_shape_fn((ids.len(), self.d), |(i, j)| {
            synthetic_feature(self.seed, ids[i], j)
        });
        let z = Array2::zeros((ids.len(), self.c));
        let labels: Vec<u32> = ids
            .iter()
            .map(|&id| synthetic_label(self.seed, id, self.c))
            .collect();
        head.learn_features(ids, &phi, &z, &labels)
    }

    /// The stored features as the refit baseline holds them: X = [φ, 1] (n × p) and the
    /// targets T (n × C), in f64.
    fn design(&self, n: usize) -> (Mat<f64>, Mat<f64>) {
        let d = self.d;
        let x = Mat::from_fn(n, d + 1, |i, j| {
            if j < d {
                synthetic_feature(self.seed, i as u64, j) as f64
            } else {
                1.0
            }
        });
        let t = Mat::from_fn(n, self.c, |i, k| {
            f64::from(u8::from(
                synthetic_label(self.seed, i as u64, self.c) as usize == k,
            ))
        });
        (x, t)
    }

    /// Measures every n of `ns` and k of the plan; returns the rows and the baseline's
    /// agreement with Lethe's weights at the first n.
    pub fn run(
        &self,
        ns: &[usize],
        plan: &Plan,
        rng: &mut StdRng,
        core_per_sample: f64,
    ) -> Result<(Vec<ForgetRow>, f64)> {
        let head = Head::open(self.core.clone(), self.state, &HeadOptions::default())?;
        let memory = self
            .compare_memory
            .then(|| Head::in_memory(self.core.clone(), &HeadOptions::default()))
            .transpose()?;
        let max_n = *ns.iter().max().expect("sizes");
        let (x, t) = self.design(max_n);
        let mut rows = Vec::new();
        let mut agreement = 0.0;
        let mut have = 0usize;
        for &n in ns {
            while have < n {
                let to = (have + FILL_CHUNK).min(n);
                let ids: Vec<u64> = (have as u64..to as u64).collect();
                self.learn(&head, &ids)?;
                if let Some(memory) = &memory {
                    self.learn(memory, &ids)?;
                }
                have = to;
            }
            let ids: Vec<u64> = (0..n as u64).collect();
            if rows.is_empty() {
                let theta = refit(x.subrows(0, n), t.subrows(0, n), SYNTHETIC_LAMBDA)?;
                agreement = agreement_with(&head.weights()?, &theta, self.d);
            }
            for &k in &plan.ks {
                let (forget, canonical) =
                    time_forget(&head, &ids, k, plan.forget_repeats, rng, &|ids| {
                        self.learn(&head, ids)
                    })?;
                let memory = match &memory {
                    Some(m) => Some(
                        time_forget(m, &ids, k, plan.forget_repeats, rng, &|ids| {
                            self.learn(m, ids)
                        })?
                        .0,
                    ),
                    None => None,
                };
                let m = n - k;
                let mut times = Vec::new();
                for _ in 0..plan.refit_repeats {
                    times.push(seconds_of(|| {
                        refit(x.subrows(0, m), t.subrows(0, m), SYNTHETIC_LAMBDA).map(drop)
                    })?);
                }
                let refit = median(times);
                let retrain = (self.d == 1280).then_some(m as f64 * core_per_sample + refit);
                eprintln!(
                    "  n {n} d {} C {} k {k}: forget {} (canonical {}), refit {} ({:.0}×)",
                    self.d,
                    self.c,
                    fmt_secs(forget),
                    fmt_secs(canonical),
                    fmt_secs(refit),
                    refit / forget
                );
                rows.push(ForgetRow {
                    n,
                    d: self.d,
                    c: self.c,
                    k,
                    forget,
                    memory,
                    canonical,
                    refit,
                    retrain,
                });
            }
        }
        head.close()?;
        Ok((rows, agreement))
    }
}

/// Times the parts of one forget call at (d, C) with k = 1, outside the head.
pub fn forget_breakdown(work: &Path, d: usize, c: usize, seed: u64) -> Result<ForgetBreakdown> {
    let n = 4 * (d + 1);
    let q: Vec<i32> = (0..n * d)
        .map(|i| (synthetic_feature(seed, (i / d) as u64, i % d) * 2f32.powi(21)) as i32)
        .collect();
    let r: Vec<i32> = (0..n * c)
        .map(|i| if i % c == (i / c) % c { 1 << 21 } else { 0 })
        .collect();
    let mut stats = ExactStats::new(d, c);
    stats.accumulate(&q, &r, 1 << 21, 1);
    let mut sol = solver::canonical(&stats, SYNTHETIC_LAMBDA, 21)
        .map_err(|_| Error::Limit("not positive definite".into()))?;
    let (mut t_stats, mut t_update) = (Vec::new(), Vec::new());
    let (mut t_sync, mut t_append) = (Vec::new(), Vec::new());
    let record = vec![0u8; 16 + 4 * (d + c)];
    let (in_place, appended) = (work.join("fsync-in-place"), work.join("fsync-append"));
    std::fs::write(&in_place, record.repeat(16)).map_err(io(&in_place))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&in_place)
        .map_err(io(&in_place))?;
    file.sync_all().map_err(io(&in_place))?;
    let mut log = std::fs::File::create(&appended).map_err(io(&appended))?;
    for s in 0..9 {
        let (qs, rs) = (&q[s * d..(s + 1) * d], &r[s * c..(s + 1) * c]);
        t_stats.push(seconds_of(|| {
            stats.accumulate(qs, rs, 1 << 21, -1);
            Ok(())
        })?);
        stats.accumulate(qs, rs, 1 << 21, 1);
        let unit = 2f64.powi(-21);
        let x = Mat::from_fn(
            1,
            d + 1,
            |_, j| {
                if j < d {
                    qs[j] as f64 * unit
                } else {
                    1.0
                }
            },
        );
        let t = Mat::from_fn(1, c, |_, k| rs[k] as f64 * unit);
        t_update.push(seconds_of(|| {
            solver::apply(&mut sol, &x, &t, -1.0)
                .map_err(|_| Error::Limit("not positive definite".into()))
        })?);
        solver::apply(&mut sol, &x, &t, 1.0)
            .map_err(|_| Error::Limit("not positive definite".into()))?;
        t_sync.push(seconds_of(|| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&record, (s * record.len()) as u64)
                .and_then(|_| file.sync_data())
                .map_err(io(&in_place))
        })?);
        t_append.push(seconds_of(|| {
            use std::io::Write;
            log.write_all(&record)
                .and_then(|_| log.sync_data())
                .map_err(io(&appended))
        })?);
    }
    for path in [&in_place, &appended] {
        std::fs::remove_file(path).map_err(io(path))?;
    }
    let fsync_range = t_sync
        .iter()
        .chain(&t_append)
        .fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    Ok(ForgetBreakdown {
        d,
        c,
        stats: median(t_stats),
        update: median(t_update),
        fsync: median(t_sync),
        fsync_append: median(t_append),
        fsync_range,
    })
}

/// An I/O error on `path`, for `map_err`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}
