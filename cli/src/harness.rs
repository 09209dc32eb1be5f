//! The timing harness of `lethe bench` and `lethe eval`: medians, paired timing, letting a
//! background re-solve settle, timing forgets, and the machine a run was measured on.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::global::Global;
use lethe::{runtime, Head, Result};

/// The machine a report was measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ort_library: String,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    pub threads: usize,
    /// /proc/loadavg's 1, 5, 15-minute load averages when the run started and ended: how busy
    /// the machine was with other work.
    pub load_start: String,
    pub load_end: String,
}

/// Median of samples (seconds).
pub fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no samples");
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// How long `f` took (seconds).
pub fn seconds_of(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Times `a` and `b` in alternating blocks, at least `min` times each and until `budget` has
/// passed; returns their medians and the number of timings of each. ONNX Runtime's thread
/// pools spin for a while after a run, so a run of one session right after another session's
/// is slowed by the other pool: fast calls (under [`BLOCK_BELOW`]) are timed in blocks of
/// [`BLOCK`] whose first call is discarded; slow ones, for which that is noise, one by one.
/// Which of the two goes first alternates from block to block.
pub fn time_pair(
    min: usize,
    budget: Duration,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64, usize)> {
    let warm = seconds_of(&mut a)?;
    b()?;
    let (block, skip) = if warm < BLOCK_BELOW.as_secs_f64() {
        (BLOCK, 1)
    } else {
        (1, 0)
    };
    let start = Instant::now();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    let mut round = 0;
    while ta.len() < min || start.elapsed() < budget {
        for first in [round % 2 == 0, round % 2 == 1] {
            let (f, times): (&mut dyn FnMut() -> Result<()>, &mut Vec<f64>) = if first {
                (&mut a, &mut ta)
            } else {
                (&mut b, &mut tb)
            };
            for i in 0..block {
                let t = seconds_of(&mut *f)?;
                if i >= skip {
                    times.push(t);
                }
            }
        }
        round += 1;
    }
    let n = ta.len();
    Ok((median(ta), median(tb), n))
}

/// Calls faster than this are timed in blocks (see [`time_pair`]).
const BLOCK_BELOW: Duration = Duration::from_millis(50);
const BLOCK: usize = 4;

/// Forgets `k` random samples among `ids` `repeats` times, each time learning them back with
/// `relearn`. Returns the medians of (the forget call, the forget call until `Head::weights`
/// returned the canonical weights).
pub fn time_forget(
    head: &Head,
    ids: &[u64],
    k: usize,
    repeats: usize,
    rng: &mut StdRng,
    relearn: &dyn Fn(&[u64]) -> Result<()>,
) -> Result<(f64, f64)> {
    let (mut call, mut ready) = (Vec::new(), Vec::new());
    head.settle()?;
    for _ in 0..repeats {
        let picked: Vec<u64> = rand::seq::index::sample(rng, ids.len(), k)
            .into_iter()
            .map(|i| ids[i])
            .collect();
        let t = Instant::now();
        head.forget(&picked)?;
        call.push(t.elapsed().as_secs_f64());
        head.weights()?;
        ready.push(t.elapsed().as_secs_f64());
        relearn(&picked)?;
        head.settle()?;
    }
    Ok((median(call), median(ready)))
}

/// This process's resident memory in bytes (`VmRSS`), when the system reports it.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(
        kb.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?
            * 1024,
    )
}

/// The 1, 5 and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The machine this process runs on, with the load average now as the run's end.
pub fn machine(g: &Global, load_start: String) -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lib = &runtime::ensure_loaded(None)?.library;
    let ort_library = std::fs::canonicalize(lib)
        .unwrap_or_else(|_| lib.clone())
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Machine {
        cpu,
        cores,
        ort_library,
        threads: g.threads,
        load_start,
        load_end: loadavg(),
    })
}
