//! G4 in process memory: after a sample is forgotten, none of its values is left in the
//! process's heap, anonymous or stack memory, in any encoding Lethe keeps them in: the core's
//! f32 features and logits, the fixed-point i32 rows, and the f64 rows of the solver and the
//! statistics.
//!
//! Two heads over the mnist core, one in memory and one with a state dir, learn a batch of
//! MNIST digits and predict one of them (the marker); the test checks that a scan finds the
//! marker's rows while the in-memory head holds them, then forgets the marker in both, waits
//! for the canonical re-solve, and reads every readable heap, anonymous and stack mapping of
//! the process (/proc/self/maps, /proc/self/mem) for pairs of the marker's values, again
//! after closing both heads: 16 contiguous bytes in every encoding, and for the f64 rows also
//! two consecutive values one padded column apart, as a row sits in the solver's column-major
//! matrices. The needles are kept masked (XOR) so that the test's own copy of them is no
//! match; the inputs, the test's own buffer, hold none of them. At d = 1280 the same scan
//! looks for the marker after forgets on the fast path and on the rank-k path, and for the
//! factor from before a forget (a sum that included the forgotten sample) and its inverse.
//!
//! It runs alone in its own binary (no test harness, one thread of its own) so that no other
//! test's memory can hold the marker.

#[cfg(target_os = "linux")]
mod common;

#[cfg(target_os = "linux")]
fn main() {
    scan::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("memory_scrub: skipped, it reads /proc/self/mem (Linux only)");
}

#[cfg(target_os = "linux")]
mod scan {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use lethe::head::UpdatePath;
    use lethe::math::solver;
    use lethe::math::stats::ExactStats;
    use lethe::math::weights::to_weights;
    use lethe::{Core, CoreOptions, Head, HeadOptions, HeadSpec};
    use ndarray::Array2;
    use zeroize::{Zeroize, Zeroizing};

    use super::common;

    const MASK: u8 = 0xA5;
    const HALF: usize = 8;

    /// A needle: two masked 8-byte halves, the second `gap` bytes after the first.
    struct Needle {
        encoding: &'static str,
        first: [u8; HALF],
        second: [u8; HALF],
        gap: usize,
    }

    /// Masked pairs of the marker's values, by encoding and layout.
    struct Needles(Vec<Needle>);

    impl Needles {
        /// Adds every 16 bytes of `values` (each `N` bytes wide), laid out one after the
        /// other, whose values are all nonzero: zeros occur everywhere.
        fn add<const N: usize>(&mut self, encoding: &'static str, values: &[[u8; N]]) {
            let per = 2 * HALF / N;
            for w in values.windows(per) {
                if w.iter().any(|v| v.iter().all(|&b| b == 0)) {
                    continue;
                }
                let bytes: Vec<u8> = w.iter().flatten().map(|b| b ^ MASK).collect();
                self.0.push(Needle {
                    encoding,
                    first: bytes[..HALF].try_into().expect("8 bytes"),
                    second: bytes[HALF..].try_into().expect("8 bytes"),
                    gap: HALF,
                });
            }
        }

        /// Adds every pair of consecutive nonzero `values`, the second `gap` bytes after the
        /// first: one row of a column-major matrix.
        fn add_strided(&mut self, encoding: &'static str, values: &[[u8; HALF]], gap: usize) {
            for w in values.windows(2) {
                if w.iter().any(|v| v.iter().all(|&b| b == 0)) {
                    continue;
                }
                self.0.push(Needle {
                    encoding,
                    first: w[0].map(|b| b ^ MASK),
                    second: w[1].map(|b| b ^ MASK),
                    gap,
                });
            }
        }

        fn widest_gap(&self) -> usize {
            self.0.iter().map(|n| n.gap).max().unwrap_or(HALF)
        }
    }

    /// The distance between one row's consecutive values in the f64 matrices of the solver
    /// (faer's column-major `Mat`, whose columns are padded) for a batch of `rows` samples.
    fn column_gap(rows: usize) -> usize {
        let m = faer::Mat::<f64>::zeros(rows, 2);
        (m.col_stride() as usize) * size_of::<f64>()
    }

    /// Every encoding of a marker's features φ and mapped core logits z that Lethe uses.
    /// The solver holds a batch of rows as a column-major matrix, so its f64 encodings are
    /// looked for both contiguous and at the column strides of the batches this test uses.
    fn needles(spec: &HeadSpec, phi: &[f32], z: &[f32], label: u32, batches: &[usize]) -> Needles {
        let unit = 1.0 / spec.fixed.scale();
        let mut q = Zeroizing::new(Vec::new());
        let mut r = Zeroizing::new(Vec::new());
        let (phi_slice, z_slice) = (phi, z);
        spec.fixed
            .quantize_features(phi_slice, 0, &mut q)
            .expect("in range");
        spec.fixed
            .quantize_targets(label as usize, spec.target_scale, z_slice, 0, &mut r)
            .expect("in range");
        let mut n = Needles(Vec::new());
        let f32s = |v: &[f32]| -> Zeroizing<Vec<[u8; 4]>> {
            Zeroizing::new(v.iter().map(|x| x.to_le_bytes()).collect())
        };
        let i32s = |v: &[i32]| -> Zeroizing<Vec<[u8; 4]>> {
            Zeroizing::new(v.iter().map(|x| x.to_le_bytes()).collect())
        };
        let f64s = |v: &[i32], scale: f64| -> Zeroizing<Vec<[u8; 8]>> {
            Zeroizing::new(
                v.iter()
                    .map(|&x| (x as f64 * scale).to_le_bytes())
                    .collect(),
            )
        };
        n.add("f32 features", &f32s(phi_slice));
        n.add("f32 core logits", &f32s(z_slice));
        n.add("i32 fixed-point features", &i32s(&q));
        n.add("i32 fixed-point targets", &i32s(&r));
        n.add("f64 features (solver)", &f64s(&q, unit));
        n.add("f64 targets (solver)", &f64s(&r, unit));
        n.add("f64 fixed-point features (statistics)", &f64s(&q, 1.0));
        n.add("f64 fixed-point targets (statistics)", &f64s(&r, 1.0));
        let mut gaps: Vec<usize> = batches.iter().map(|&k| column_gap(k)).collect();
        gaps.sort_unstable();
        gaps.dedup();
        for gap in gaps.into_iter().filter(|&g| g != HALF) {
            n.add_strided("f64 features (solver, by column)", &f64s(&q, unit), gap);
            n.add_strided("f64 targets (solver, by column)", &f64s(&r, unit), gap);
        }
        assert!(
            n.0.len() >= 10,
            "the marker has too few distinctive windows"
        );
        n
    }

    /// The readable heap and anonymous mappings of this process: (start, end, name).
    fn mappings() -> Vec<(u64, u64, String)> {
        let maps = File::open("/proc/self/maps").expect("open /proc/self/maps");
        BufReader::new(maps)
            .lines()
            .map(|l| l.expect("read /proc/self/maps"))
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let range = parts.next()?;
                let perms = parts.next()?;
                let name = parts.nth(3).unwrap_or("").to_string();
                let (start, end) = range.split_once('-')?;
                let anonymous = name.is_empty() || name == "[heap]" || name == "[stack]";
                (perms.starts_with('r') && anonymous).then(|| {
                    (
                        u64::from_str_radix(start, 16).expect("hex"),
                        u64::from_str_radix(end, 16).expect("hex"),
                        name,
                    )
                })
            })
            .collect()
    }

    /// Where the needles occur: (encoding, address, mapping).
    fn scan(needles: &Needles) -> Vec<(&'static str, u64, String)> {
        // The needles by the more distinctive of their first two 4-byte words (kept masked
        // too; the low word of an f64 holding an integer is zero, as most of memory is): a
        // scan looks up each offset twice, in a few seconds.
        let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let mask = u32::from_le_bytes([MASK; 4]);
        let mut by_word: [HashMap<u32, Vec<&Needle>>; 2] = [HashMap::new(), HashMap::new()];
        for needle in &needles.0 {
            let nonzero = |w: usize| {
                needle.first[4 * w..4 * w + 4]
                    .iter()
                    .filter(|&&b| b != MASK)
                    .count()
            };
            let w = usize::from(nonzero(1) > nonzero(0));
            by_word[w]
                .entry(word(&needle.first, 4 * w))
                .or_default()
                .push(needle);
        }
        let matches =
            |at: &[u8], half: &[u8; HALF]| at.iter().zip(half).all(|(&w, &n)| w ^ MASK == n);
        let mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut found = Vec::new();
        const CHUNK: usize = 1 << 20;
        let reach = needles.widest_gap() + HALF;
        let mut buf = vec![0u8; CHUNK + reach];
        for (start, end, name) in mappings() {
            let mut at = start;
            while at < end {
                let len = ((end - at) as usize).min(CHUNK + reach);
                let Ok(got) = mem.read_at(&mut buf[..len], at) else {
                    break;
                };
                // Aligned offsets only: every buffer Lethe keeps values in is aligned to them.
                for offset in (0..got.min(CHUNK).saturating_sub(HALF - 1)).step_by(4) {
                    let candidates = (0..2)
                        .filter_map(|w| by_word[w].get(&(word(&buf[offset..], 4 * w) ^ mask)));
                    for needle in candidates.flatten() {
                        let second = offset + needle.gap;
                        if second + HALF <= got
                            && matches(&buf[offset..offset + HALF], &needle.first)
                            && matches(&buf[second..second + HALF], &needle.second)
                        {
                            found.push((needle.encoding, at + offset as u64, name.clone()));
                        }
                    }
                }
                at += CHUNK as u64;
            }
        }
        found
    }

    /// The encodings among `hits`, once each.
    fn encodings(hits: &[(&'static str, u64, String)]) -> Vec<&'static str> {
        let mut e: Vec<&str> = hits.iter().map(|h| h.0).collect();
        e.sort_unstable();
        e.dedup();
        e
    }

    pub fn run() {
        through_the_mnist_core();
        // At DESIGN.md's size (d = 1280, C = 100): the fast path with changes pending, and
        // the rank-k update of a head below 2p samples.
        at_scale(2 * 1281 + 200, Some(6));
        at_scale(1000, None);
        old_factor(UpdatePath::RankK);
        old_factor(UpdatePath::Resolve);
    }

    /// The marker learned and forgotten through the mnist core, in memory and in a state dir.
    fn through_the_mnist_core() {
        let core = Arc::new(
            Core::open(common::bundle_dir("mnist-core"), &CoreOptions::default())
                .expect("open the core"),
        );
        let tmp = common::temp_dir();
        // Rows in memory, and rows in a state dir (read back when forgotten).
        let heads = [
            Head::in_memory(core.clone(), &HeadOptions::default()).expect("a head"),
            Head::open(
                core.clone(),
                tmp.path().join("state"),
                &HeadOptions::default(),
            )
            .expect("open a state dir"),
        ];
        // More samples than twice the head's p = 129, so that the background builds the fast
        // path and the forget goes through the Woodbury correction.
        let n = 300;
        let inputs = common::mnist_core_input(n);
        let inputs = inputs.as_slice().expect("standard layout");
        let per = core.input_len();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| 1000 + i).collect();
        let marker = 5;
        let marker_input = &inputs[marker * per..(marker + 1) * per];
        let needles = {
            let (phi, z) = heads[0]
                .core_features(marker_input, 1)
                .expect("run the core");
            let (phi, z) = (phi.row(0), z.row(0));
            let (phi, z) = (phi.as_slice(), z.as_slice());
            let spec = heads[0].spec();
            let contiguous = "contiguous";
            let (phi, z) = (phi.expect(contiguous), z.expect(contiguous));
            needles(spec, phi, z, labels[marker], &[n - 2, 2, 1])
        };

        // Learn in two batches (the statistics' block path and its direct path) and predict
        // the marker; then forget it (through the fast path, once the background has built
        // it) and wait for the canonical weights.
        for head in &heads {
            head.learn(&ids[..n - 2], &inputs[..(n - 2) * per], &labels[..n - 2])
                .expect("learn");
            head.learn(&ids[n - 2..], &inputs[(n - 2) * per..], &labels[n - 2..])
                .expect("learn");
            head.predict(marker_input, 1).expect("predict");
            head.settle().expect("settle");
        }
        let learned = scan(&needles);
        for head in &heads {
            // Held, so that no rebase folds the correction before it is checked.
            head.hold_resolve(true);
            head.forget(&[ids[marker]]).expect("forget");
            assert_eq!(
                head.pending_corrections(),
                Some(1),
                "the forget did not go through the fast path"
            );
            head.hold_resolve(false);
            head.weights().expect("weights");
        }
        let forgotten = scan(&needles);
        for head in heads {
            head.close().expect("close");
        }
        let closed = scan(&needles);

        println!(
            "memory_scrub: {} windows of the marker; {} found while it is learned ({:?})",
            needles.0.len(),
            learned.len(),
            encodings(&learned)
        );
        // The scan sees Lethe's buffers: it finds the rows the in-memory head holds.
        assert!(
            encodings(&learned).contains(&"i32 fixed-point features"),
            "the scan should find the learned marker's rows"
        );
        for (when, hits) in [("after forget", &forgotten), ("after close", &closed)] {
            for (encoding, address, mapping) in hits.iter().take(20) {
                println!("{when}: {encoding} at {address:#x} in {mapping:?}");
            }
            assert!(
                hits.is_empty(),
                "{when}: {} windows of the forgotten sample are still in memory ({:?})",
                hits.len(),
                encodings(hits)
            );
        }
        println!("memory_scrub: ok, none left after forget and after close");
    }

    /// A detached head at d = 1280, C = 100 with `n` samples forgets 4 samples and then the
    /// marker and one more, the first change held pending: through the fast path's correction
    /// when `pending` is the rows it then holds, through the rank-k update when `None`.
    fn at_scale(n: usize, pending: Option<usize>) {
        let (d, c) = (1280, 100);
        let spec = common::detached_spec(d, c, 1.0);
        let head = Head::detached(spec.clone(), &HeadOptions::default()).expect("a head");
        let phi = common::uniform(&mut common::rng(5), n, d, 3.0);
        let z = Array2::<f32>::zeros((n, c));
        let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
        let ids: Vec<u64> = (0..n as u64).collect();
        let marker = 17;
        let needles = needles(
            &spec,
            phi.row(marker).as_slice().expect("contiguous"),
            z.row(marker).as_slice().expect("contiguous"),
            labels[marker],
            &[n, 4, 2],
        );
        head.learn_features(&ids, &phi, &z, &labels).expect("learn");
        // The features are the test's own buffer (outside G4): gone before the scan.
        let mut phi = phi;
        phi.as_slice_mut().expect("standard layout").zeroize();
        drop(phi);
        head.settle().expect("settle");
        head.hold_resolve(true);
        head.forget(&ids[3..7]).expect("forget");
        head.forget(&[ids[marker], ids[7]]).expect("forget");
        assert_eq!(head.pending_corrections(), pending, "the path that served");
        head.hold_resolve(false);
        head.settle().expect("settle");
        let after = scan(&needles);
        for (encoding, address, mapping) in after.iter().take(20) {
            println!("n = {n}: {encoding} at {address:#x} in {mapping:?}");
        }
        assert!(
            after.is_empty(),
            "n = {n}: {} windows of the forgotten sample are still in memory ({:?})",
            after.len(),
            encodings(&after)
        );
        println!("memory_scrub: ok at d = 1280 with n = {n}, none left after the forget");
    }

    /// A factor from before a forget is a sum over samples that included the forgotten one:
    /// beside the current factor it gives the forgotten sample away. A head at d = 1280 that
    /// serves forgets from the fast path has its factor inverted in the background; then a
    /// forget through `path` (the rank-k update, or the blocked re-solve, which factors in the
    /// old factor's buffer) re-solves without inverting again, so nothing of that inversion's
    /// temporaries is overwritten. Afterwards no pair of entries of the earlier factor L or of
    /// L⁻¹ (the inversion's intermediate), down a column or along a row, is left in memory. (A
    /// library's inversion left 2 118 windows of L⁻¹ in its per-thread packing buffers.)
    fn old_factor(path: UpdatePath) {
        let (d, c) = (1280, 100);
        let n = 2 * (d + 1) + 200;
        let spec = common::detached_spec(d, c, 1.0);
        let head = Head::detached(spec.clone(), &HeadOptions::default()).expect("a head");
        let phi = common::uniform(&mut common::rng(11), n, d, 3.0);
        let z = Array2::<f32>::zeros((n, c));
        let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
        let ids: Vec<u64> = (0..n as u64).collect();
        head.learn_features(&ids, &phi, &z, &labels).expect("learn");
        head.settle().expect("settle");
        assert!(
            head.pending_corrections().is_some(),
            "the background built the fast path's inverse"
        );
        // The head's factor, recomputed from the same statistics: the canonical solve is a
        // function of them (G7), which the weights confirm.
        let needles = {
            let (mut q, mut r) = (Zeroizing::new(Vec::new()), Zeroizing::new(Vec::new()));
            for (i, &label) in labels.iter().enumerate() {
                let (phi, z) = (phi.row(i), z.row(i));
                let contiguous = "contiguous";
                let (phi, z) = (
                    phi.as_slice().expect(contiguous),
                    z.as_slice().expect(contiguous),
                );
                spec.fixed
                    .quantize_features(phi, i, &mut q)
                    .expect("in range");
                spec.fixed
                    .quantize_targets(label as usize, spec.target_scale, z, i, &mut r)
                    .expect("in range");
            }
            let mut stats = ExactStats::new(d, c);
            stats.accumulate(&q, &r, spec.fixed.one(), 1);
            let sol = solver::canonical(&stats, spec.lambda, spec.fixed.frac_bits)
                .expect("positive definite");
            let head_weights = head.weights().expect("weights");
            let ours = to_weights(&sol.theta, d);
            assert!(
                ours.w == head_weights.w && ours.b == head_weights.b,
                "the test's solve reproduces the head's"
            );
            let p = d + 1;
            let bytes = |f: &dyn Fn(usize) -> f64, len: usize| -> Zeroizing<Vec<[u8; HALF]>> {
                Zeroizing::new((0..len).map(|t| f(t).to_le_bytes()).collect())
            };
            // N = L⁻¹ (column-major), by a plain forward substitution of the identity.
            let mut inv = Zeroizing::new(vec![0.0f64; p * p]);
            for (c, col) in inv.chunks_exact_mut(p).enumerate() {
                col[c] = 1.0;
                for j in c..p {
                    col[j] /= sol.l[(j, j)];
                    let v = col[j];
                    for (i, ci) in col.iter_mut().enumerate().skip(j + 1) {
                        *ci -= sol.l[(i, j)] * v;
                    }
                }
            }
            let mut needles = Needles(Vec::new());
            for j in 0..p {
                needles.add("factor column", &bytes(&|t| sol.l[(j + t, j)], p - j));
                needles.add("factor row", &bytes(&|t| sol.l[(j, t)], j + 1));
                needles.add(
                    "inverse factor column",
                    &bytes(&|t| inv[j * p + j + t], p - j),
                );
                needles.add("inverse factor row", &bytes(&|t| inv[t * p + j], j + 1));
            }
            needles
        };
        let mut phi = phi;
        phi.as_slice_mut().expect("standard layout").zeroize();
        drop(phi);
        head.set_update_path(path);
        head.forget(&[ids[17]]).expect("forget");
        assert_eq!(head.pending_corrections(), None, "{path:?} served");
        head.settle().expect("settle");
        let after = scan(&needles);
        for (encoding, address, mapping) in after.iter().take(20) {
            println!("old factor, {path:?}: {encoding} at {address:#x} in {mapping:?}");
        }
        assert!(
            after.is_empty(),
            "{path:?}: {} windows of the factor from before the forget are still in memory \
             ({:?})",
            after.len(),
            encodings(&after)
        );
        println!(
            "memory_scrub: ok, none of the {} windows of the earlier factor left ({path:?})",
            needles.0.len()
        );
    }
}
