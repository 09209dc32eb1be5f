//! Forget: Lethe's forget on a durable and an in-memory head vs the closed-form refit and the
//! re-solve from f64 sufficient statistics, back-to-back forgets, and where the time of one
//! forget call goes (in situ).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use faer::Mat;
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::Rng;

use super::baselines::{agreement_with, refit, StatsResolve};
use super::plan::Plan;
use super::results::{BackToBack, ForgetBreakdown, ForgetPhases, ForgetRow};
use super::spans::SpanTimes;
use super::workloads::{synthetic_feature, synthetic_label, SYNTHETIC_LAMBDA};
use crate::harness::{median, seconds_of, time_forget};
use crate::units::fmt_secs;
use lethe::{Core, Error, Head, HeadOptions, Result};

/// The phases of a call, as the library's trace spans name them, in the order the report
/// lists them (any other after them).
const PHASES: [&str; 5] = ["store", "commit", "stats", "solve", "publish"];

/// Samples per learn call when filling a head.
const FILL_CHUNK: usize = 2500;

/// One (d, C) head on a synthetic bundle, grown through a list of n.
pub struct ForgetSweep<'a> {
    pub core: &'a Arc<Core>,
    pub state: &'a Path,
    pub d: usize,
    pub c: usize,
    pub seed: u64,
    /// Also time forget on an in-memory head holding the same samples, back-to-back forgets
    /// and the phases of a forget call, at the largest n.
    pub compare_memory: bool,
}

/// What one sweep measured.
pub struct SweepResult {
    pub rows: Vec<ForgetRow>,
    /// The refit baseline's agreement with Lethe's weights at the first n.
    pub agreement: f64,
    pub back_to_back: Option<BackToBack>,
    pub phases: Option<ForgetPhases>,
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

    /// Measures every n of `ns` and k of the plan (k < n).
    pub fn run(
        &self,
        ns: &[usize],
        plan: &Plan,
        rng: &mut StdRng,
        core_per_sample: f64,
    ) -> Result<SweepResult> {
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
            let mut stats = StatsResolve::new(x.subrows(0, n), t.subrows(0, n), SYNTHETIC_LAMBDA);
            for &k in plan.ks.iter().filter(|&&k| k < n) {
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
                let mut times = Vec::new();
                for _ in 0..plan.forget_repeats {
                    let picked = rand::seq::index::sample(rng, n, k).into_vec();
                    let xs = Mat::from_fn(k, self.d + 1, |i, j| x[(picked[i], j)]);
                    let ts = Mat::from_fn(k, self.c, |i, j| t[(picked[i], j)]);
                    times.push(seconds_of(|| {
                        stats.forget(xs.as_ref(), ts.as_ref()).map(drop)
                    })?);
                    stats.learn(xs.as_ref(), ts.as_ref());
                }
                let stats_resolve = median(times);
                let retrain = (self.d == 1280).then_some(m as f64 * core_per_sample + refit);
                eprintln!(
                    "  n {n} d {} C {} k {k}: forget {} (canonical {}), refit {} ({:.0}×), \
                     stats re-solve {} ({:.1}×)",
                    self.d,
                    self.c,
                    fmt_secs(forget),
                    fmt_secs(canonical),
                    fmt_secs(refit),
                    refit / forget,
                    fmt_secs(stats_resolve),
                    stats_resolve / forget
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
                    stats_resolve,
                    retrain,
                });
            }
        }
        let (mut back_to_back, mut phases) = (None, None);
        if self.compare_memory {
            let ids: Vec<u64> = (0..max_n as u64).collect();
            phases = Some(self.phases(&head, &ids, max_n, plan.forget_repeats, rng)?);
            back_to_back = Some(self.back_to_back(&head, &ids, max_n, plan.back_to_back, rng)?);
        }
        head.close()?;
        Ok(SweepResult {
            rows,
            agreement,
            back_to_back,
            phases,
        })
    }

    /// The phases of one-sample forgets, timed in situ (the background idle before each), in
    /// the order of [`PHASES`].
    fn phases(
        &self,
        head: &Head,
        ids: &[u64],
        n: usize,
        repeats: usize,
        rng: &mut StdRng,
    ) -> Result<ForgetPhases> {
        let (mut calls, mut by_phase) = (Vec::new(), Vec::<(&'static str, Vec<f64>)>::new());
        for _ in 0..repeats {
            let id = ids[rng.random_range(0..ids.len())];
            let start = Instant::now();
            let (done, spans) = SpanTimes::record(|| head.forget(&[id]));
            calls.push(start.elapsed().as_secs_f64());
            done?;
            for (name, seconds) in spans {
                match by_phase.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, times)) => times.push(seconds),
                    None => by_phase.push((name, vec![seconds])),
                }
            }
            self.learn(head, &[id])?;
            head.settle()?;
        }
        // The commit runs beside the statistics and the solve: the order the spans close in
        // varies, the table's does not.
        by_phase.sort_by_key(|(name, _)| {
            PHASES
                .iter()
                .position(|p| p == name)
                .unwrap_or(PHASES.len())
        });
        Ok(ForgetPhases {
            n,
            d: self.d,
            c: self.c,
            call: median(calls),
            phases: by_phase
                .into_iter()
                .map(|(name, times)| (name, median(times)))
                .collect(),
        })
    }

    /// `count` one-sample forgets issued one after another, each durable; then the wait until
    /// the canonical weights are ready. The samples are learned back afterwards.
    fn back_to_back(
        &self,
        head: &Head,
        ids: &[u64],
        n: usize,
        count: usize,
        rng: &mut StdRng,
    ) -> Result<BackToBack> {
        head.settle()?;
        let picked: Vec<u64> = rand::seq::index::sample(rng, ids.len(), count)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        let start = Instant::now();
        for id in &picked {
            head.forget(&[*id])?;
        }
        let forgets = start.elapsed().as_secs_f64();
        let canonical = seconds_of(|| head.weights().map(drop))?;
        self.learn(head, &picked)?;
        Ok(BackToBack {
            n,
            d: self.d,
            c: self.c,
            count,
            seconds: forgets,
            canonical,
        })
    }
}

/// Probes the disk's sync latency with records the size of one sample's at (d, C).
pub fn forget_breakdown(work: &Path, d: usize, c: usize) -> Result<ForgetBreakdown> {
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
        fsync: median(t_sync),
        fsync_append: median(t_append),
        fsync_range,
    })
}

/// An I/O error on `path`, for `map_err`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}
