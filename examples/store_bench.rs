//! The state dir's costs at DESIGN.md's scale (n = 50 000, d = 1280, C = 100), with synthetic
//! features learned through the public API: opening a closed state dir, forgetting 1 sample and
//! learning 1 or 100, each durable (synced) before it returns; and closing. Each learn/forget
//! is also timed on an in-memory head, so the difference is the state dir's share. With `key`,
//! the same runs again in one process on an encrypted state dir (DESIGN.md G9), so that the
//! cost of encryption is a ratio within one run.
//!
//! ```text
//! cargo run --release --example store_bench -- [DIR] [N] [key]
//! ```
//! DIR (default: a temporary dir) keeps the state dirs between runs, so that building them (a
//! few minutes each) happens once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lethe::FixedPoint;
use lethe::{Head, HeadOptions, HeadSpec, Result, StateKey};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 1280;
const C: usize = 100;
const CORE_SHA256: &str = "be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c4be0c";
/// Timed repetitions of each call.
const REPEATS: usize = 15;

fn spec() -> HeadSpec {
    let fixed = FixedPoint {
        frac_bits: 16,
        feature_max_abs: 8.0,
        target_max_abs: 16.0,
    };
    HeadSpec::detached(D, C, 1.0, fixed).expect("a valid spec")
}

/// Synthetic features of samples `ids`: each row drawn from [−1, 1) by a generator seeded
/// with the sample's id.
fn batch(ids: &[u64]) -> (Array2<f32>, Array2<f32>, Vec<u32>) {
    let mut phi = Array2::zeros((ids.len(), D));
    for (mut row, &id) in phi.rows_mut().into_iter().zip(ids) {
        let mut rng = StdRng::seed_from_u64(id);
        row.iter_mut()
            .for_each(|v| *v = rng.random_range(-1.0..1.0));
    }
    let z = Array2::zeros((ids.len(), C));
    let labels = ids.iter().map(|&id| (id % C as u64) as u32).collect();
    (phi, z, labels)
}

fn learn(head: &Head, ids: &[u64]) -> Result<()> {
    let (phi, z, labels) = batch(ids);
    head.learn_features(ids, &phi, &z, &labels)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and max of `REPEATS` runs of `f(i)`, in ms.
fn time(mut f: impl FnMut(usize) -> Result<()>) -> Result<(f64, f64)> {
    let mut t: Vec<f64> = Vec::with_capacity(REPEATS);
    for i in 0..REPEATS {
        let start = Instant::now();
        f(i)?;
        t.push(ms(start.elapsed()));
    }
    t.sort_by(f64::total_cmp);
    Ok((t[REPEATS / 2], t[REPEATS - 1]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let root = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lethe-store-bench"));
    let n: u64 = args.get(2).map_or(50_000, |s| s.parse().expect("N"));
    bench(&root, n, None)?;
    if args.get(3).is_some_and(|a| a == "key") {
        println!();
        bench(&root, n, Some(StateKey::new([0x6b; 32])))?;
    }
    Ok(())
}

fn bench(root: &std::path::Path, n: u64, key: Option<StateKey>) -> Result<()> {
    let suffix = if key.is_some() { "-encrypted" } else { "" };
    let dir = root.join(format!("n{n}-d{D}-c{C}{suffix}"));
    let options = HeadOptions {
        key,
        ..HeadOptions::default()
    };
    if !dir.join("stats.bin").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let start = Instant::now();
        let head = Head::open_detached(spec(), CORE_SHA256, &dir, &options)?;
        let ids: Vec<u64> = (0..n).collect();
        for chunk in ids.chunks(1000) {
            learn(&head, chunk)?;
        }
        head.close()?;
        println!(
            "built the state dir: n = {n} in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let buckets: u64 = std::fs::read_dir(&dir)
        .map_err(|e| lethe::Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("samples-"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    println!(
        "state dir {}: bucket files {:.1} MB, stats.bin {:.1} MB",
        dir.display(),
        buckets as f64 / 1e6,
        size("stats.bin") as f64 / 1e6
    );

    let mut opens = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let head = Head::open_detached(spec(), CORE_SHA256, &dir, &options)?;
        opens.push(ms(start.elapsed()));
        assert_eq!(head.info().samples, n);
        head.close()?;
    }
    opens.sort_by(f64::total_cmp);
    println!(
        "open a closed state dir: median {:.1} ms, min {:.1} ms (warm page cache)",
        opens[2], opens[0]
    );

    let head = Head::open_detached(spec(), CORE_SHA256, &dir, &options)?;
    let memory = Head::detached(spec(), &HeadOptions::default())?;
    let warm: Vec<u64> = (0..4 * REPEATS as u64).collect();
    learn(&memory, &warm)?;
    let start = Instant::now();
    head.forget(&[0])?;
    println!(
        "forget 1, the first change after opening (overwrites stats.bin): {:.1} ms",
        ms(start.elapsed())
    );
    let next = |i: usize| 1 + i as u64;
    let (disk, disk_max) = time(|i| head.forget(&[next(i)]))?;
    let (mem, _) = time(|i| memory.forget(&[next(i)]))?;
    println!("forget 1: {disk:.2} ms median ({disk_max:.2} max); in memory {mem:.2} ms");
    let fresh = |i: usize, k: u64| -> Vec<u64> {
        (0..k).map(|j| (1 << 40) + i as u64 * 1000 + j).collect()
    };
    let (disk, disk_max) = time(|i| learn(&head, &fresh(i, 1)))?;
    let (mem, _) = time(|i| learn(&memory, &fresh(i, 1)))?;
    println!("learn 1: {disk:.2} ms median ({disk_max:.2} max); in memory {mem:.2} ms");
    let (disk, disk_max) = time(|i| learn(&head, &fresh(i + REPEATS, 100)))?;
    let (mem, _) = time(|i| learn(&memory, &fresh(i + REPEATS, 100)))?;
    println!("learn 100: {disk:.2} ms median ({disk_max:.2} max); in memory {mem:.2} ms");

    // Put the samples back as they were, so that the next run measures the same state dir.
    let learned: Vec<u64> = (0..2 * REPEATS)
        .flat_map(|i| fresh(i, if i < REPEATS { 1 } else { 100 }))
        .collect();
    head.forget(&learned)?;
    learn(&head, &(0..=REPEATS as u64).collect::<Vec<_>>())?;
    let start = Instant::now();
    head.close()?;
    println!(
        "close after changes (compaction): {:.0} ms",
        ms(start.elapsed())
    );
    Ok(())
}
