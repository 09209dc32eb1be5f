//! The report as Markdown (docs/BENCHMARKS.md).

use super::measure::TEXT_BATCHES;
use super::plot::PLOT_FILE;
use super::results::{BenchReport, ForgetRow, PredictRow};
use crate::units::{fmt_n, fmt_ratio, fmt_secs, fmt_signed_secs};

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The targets table's row `what` for a forget that must take at most 1.1× the f64 re-solve.
fn against_resolve(what: &str, r: &ForgetRow) -> String {
    let ratio = r.forget / r.stats_resolve;
    format!(
        "| {what} | ≤ 1.1× | {} ({} vs {}) | {} |\n",
        fmt_ratio(ratio),
        fmt_secs(r.forget),
        fmt_secs(r.stats_resolve),
        met(ratio <= 1.1)
    )
}

/// The ratios of `p`'s bundle's other predict rows.
fn others_of(rows: &[PredictRow], p: &PredictRow) -> String {
    let others: Vec<String> = rows
        .iter()
        .filter(|r| r.bundle == p.bundle && r.batch != p.batch)
        .map(|r| format!("{} at batch {}", fmt_ratio(r.lethe / r.bare), r.batch))
        .collect();
    if others.is_empty() {
        "none measured".into()
    } else {
        others.join(", ")
    }
}

impl BenchReport {
    /// The report as Markdown (docs/BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let command = if self.quick {
            "cargo run --release -p lethe-cli -- bench --quick"
        } else {
            "cargo run --release -p lethe-cli -- bench"
        };
        s += "# Benchmarks\n\n";
        s += &format!(
            "Written by `{command}` (cli/src/bench/) in {} on {} ({} cores), ONNX Runtime \
             `{}` on the CPU, intra-op threads {}. Every figure is the median of repeats; each \
             ratio compares two numbers measured in the same run. Other work on the machine \
             adds noise, most to the smallest times (1, 5, 15-minute load averages {} at the \
             start, {} at the end).\n\n",
            fmt_secs(self.seconds),
            m.cpu,
            m.cores,
            m.ort_library,
            if m.threads == 0 {
                "ONNX Runtime's default".to_string()
            } else {
                m.threads.to_string()
            },
            m.load_start,
            m.load_end
        );
        if self.quick {
            s += "**Quick run** (small sizes, few repeats): a smoke test, not the targets' \
                  sizes.\n\n";
        }
        s += &self.targets_section();
        s += &self.predict_section();
        s += &self.forget_section();
        s += &self.learn_section();
        s += &self.open_section();
        s += &self.encryption_section();
        s += &self.close_section();
        s += &self.findings_section();
        s
    }

    /// For each missed target: the measured cause and what would fix it.
    fn findings_section(&self) -> String {
        let mut s = String::from("## Missed targets: why, and what would fix them\n\n");
        let mut any = false;
        if let Some(p) = self
            .predict
            .iter()
            .filter(|r| r.lethe > 1.03 * r.bare)
            .max_by(|a, b| (a.lethe / a.bare).total_cmp(&(b.lethe / b.bare)))
        {
            any = true;
            s += &format!(
                "- **Predict overhead** ({}, batch {}: {}): {} per call on top of {}, of \
                 which the head's forward pass is {}. The rest is Lethe's handling of the core \
                 run (it checks every input value for NaN/Inf, copies the outputs out of the \
                 buffers ONNX Runtime wrote them into and zeroes those, and maps the core \
                 logits onto the head's classes) or noise from \
                 other work on the machine; {}'s other rows: {}.\n",
                p.bundle,
                p.batch,
                fmt_ratio(p.lethe / p.bare),
                fmt_secs(p.lethe - p.bare),
                fmt_secs(p.bare),
                fmt_secs(p.head),
                p.bundle,
                others_of(&self.predict, p)
            );
        }
        if let Some(h) = self
            .headline()
            .filter(|h| h.refit < 1000.0 * h.forget || h.stats_resolve < 30.0 * h.forget)
        {
            any = true;
            let b = &self.breakdown;
            let memory = h.memory.unwrap_or(f64::NAN);
            let p = h.d + 1;
            s += &format!(
                "- **Forget vs refit and vs the f64 re-solve** (n = {}, d = {}, C = {}: {} and \
                 {}). Of the durable forget's {}, the same forget on an in-memory head takes \
                 {}; the rest is the state dir's writing and syncing before the call returns \
                 (G3, G4): on this machine's shared disk `fdatasync` took {} after an in-place \
                 overwrite and {} after an append when probed (medians; the probes ranged from \
                 {} to {}). The phases of a real call are in the forget section ({}). The caller's path is already down \
                 to what must happen before the call returns: the journal's append and sync, \
                 the exact statistics' update (into i64 deltas: \
                 {:.1} MB read and written; it cannot be left to the background, which would \
                 have to keep the forgotten sample's row until then, against G4) and the \
                 Woodbury correction (one pass over the {:.1} MB packed inverse and the \
                 weights). Reaching 1000× at this n needs the whole durable forget under {}, \
                 {:.1}× less than now. Tried on this machine and not kept: zeros written ahead \
                 of the journal's entries, so that a forget's sync is that of an in-place \
                 overwrite (in interleaved runs of the two builds it took about 40 µs off the \
                 commit's 350–400 µs in back-to-back forgets, and nothing measurable off an \
                 isolated forget); the statistics' update beside the correction on the second \
                 core (on this 2-core virtual machine, whose kernel packs runnable threads onto \
                 one vCPU, a thread started for under a few milliseconds of work ran only once \
                 the caller's thread blocked, so the call took as long); and the commit beside \
                 them, as a large change runs it (about 8 % slower, its sync 0.5 → 1.2–1.7 \
                 ms).\n",
                fmt_n(h.n),
                h.d,
                h.c,
                fmt_ratio(h.refit / h.forget),
                fmt_ratio(h.stats_resolve / h.forget),
                fmt_secs(h.forget),
                fmt_secs(memory),
                fmt_secs(b.fsync),
                fmt_secs(b.fsync_append),
                fmt_secs(b.fsync_range.0),
                fmt_secs(b.fsync_range.1),
                self.phases_inline(),
                (p * (p + 1) / 2 * 8) as f64 / 1e6,
                (p * (p + 1) / 2 * 8) as f64 / 1e6,
                fmt_secs(h.refit / 1000.0),
                1000.0 * h.forget / h.refit,
            );
        }
        if let Some(r) = self.headline().and_then(|h| {
            self.forget
                .iter()
                .find(|r| (r.n, r.d, r.c, r.k) == (h.n, h.d, h.c, 1000))
                .filter(|r| r.forget > 1.1 * r.stats_resolve)
        }) {
            any = true;
            s += &format!(
                "- **Forget of 1 000 samples** ({} durable{} vs the f64 re-solve's {}): the call \
                 re-solves (the cost model's choice) in the blocked order, on every core, and \
                 the background restores the canonical weights after it. It updates the exact \
                 statistics by the 1 000 rows first (k·p²/2 = {:.0} M products: the baseline's \
                 downdate, in chunks small enough to stay exact), which must stay on the call \
                 (G4), as must reading and overwriting the 1 000 records (a durable call). \
                 Overlapping that I/O with the statistics' update, or the update with the \
                 factorization, is what is left.\n",
                fmt_secs(r.forget),
                r.memory
                    .map(|m| format!(", {} in memory,", fmt_secs(m)))
                    .unwrap_or_default(),
                fmt_secs(r.stats_resolve),
                (r.k * (r.d + 1) * (r.d + 2) / 2) as f64 / 1e6,
            );
        }
        let above: Vec<&ForgetRow> = self
            .forget
            .iter()
            .filter(|r| r.forget > 1.1 * r.stats_resolve)
            .collect();
        if let Some(w) = self.worst_against_resolve().filter(|_| !above.is_empty()) {
            any = true;
            // Rows where 1.1× the baseline is less than one sync after an append (a forget's
            // journal commit): no durable forget can come within 1.1× of those.
            let sync = self.breakdown.fsync_append;
            let (below_sync, rest): (Vec<&ForgetRow>, Vec<&ForgetRow>) =
                above.iter().partition(|r| 1.1 * r.stats_resolve < sync);
            let name = |r: &ForgetRow| {
                format!(
                    "n = {}, d = {}, C = {}, k = {}: {}",
                    fmt_n(r.n),
                    r.d,
                    r.c,
                    r.k,
                    fmt_ratio(r.forget / r.stats_resolve)
                )
            };
            s += &format!(
                "- **A forget of any k vs the f64 re-solve** (worst row: {}; {} of the sweep's \
                 {} rows above 1.1×). The baseline keeps its statistics in memory and writes \
                 nothing; Lethe's forget is durable.",
                name(w),
                above.len(),
                self.forget.len(),
            );
            if !below_sync.is_empty() {
                s += &format!(
                    " In {} of those rows 1.1× the baseline's whole forget is less than one \
                     `fdatasync` after an append on this disk ({} when probed), so no durable \
                     forget can meet the target there.",
                    below_sync.len(),
                    fmt_secs(sync),
                );
            }
            if !rest.is_empty() {
                s += &format!(
                    " {}: {}. Their forget pays, on top of the baseline's work, the durable \
                     call's fixed costs (reading and overwriting the records, the journal's \
                     sync: the forget section's phases) and the exact statistics' update by \
                     the k rows (on the call: G4); where the call re-solves (the cost model's \
                     choice at large k, and below 2p samples), the blocked re-solve on this \
                     machine's two vCPUs is not enough faster than the baseline's sequential \
                     Cholesky to absorb them.",
                    if below_sync.is_empty() {
                        "The rows"
                    } else {
                        "The others"
                    },
                    rest.iter().map(|r| name(r)).collect::<Vec<_>>().join("; "),
                );
            }
            s += "\n";
        }
        if let Some(h) = self
            .headline()
            .filter(|h| h.retrain.is_some_and(|t| t < 1e5 * h.forget))
        {
            any = true;
            s += &format!(
                "- **Forget vs full retrain**: {} at n = {}; the same causes as above, and the \
                 ratio grows with n.\n",
                fmt_ratio(h.retrain.unwrap_or(0.0) / h.forget),
                fmt_n(h.n)
            );
        }
        for l in self
            .learn
            .iter()
            .filter(|l| l.batch > 1 && l.durable > 0.1 * l.core)
        {
            any = true;
            s += &format!(
                "- **Learn share** ({}, batch {}: {:.0} % durable, {:.0} % in memory). The \
                 core takes {} per batch; the state dir adds {} per learn call (writing the \
                 records and syncing before the call returns), the head's update of its exact \
                 statistics (O(k·d²)) and of its weights (the rank-k update, the correction or \
                 a re-solve, whichever the cost model expects to be fastest) the rest. \
                 Committing several learn calls with one sync (group commit), or larger \
                 batches, amortizes the first; the second is what the in-memory share shows.\n",
                l.bundle,
                l.batch,
                100.0 * l.durable / l.core,
                100.0 * l.memory / l.core,
                fmt_secs(l.core),
                fmt_secs((l.durable - l.memory).max(0.0))
            );
        }
        let c = &self.close;
        if c.close > 0.1 * c.rewrite {
            any = true;
            let p = c.d + 1;
            s += &format!(
                "- **Close after one forget** ({:.1} % of rewriting every file: {}): the close \
                 writes and syncs `stats.bin` ({:.1} MB: the exact statistics as 16-byte \
                 integers), the bucket file that changed and the journal, and syncs what the \
                 forget overwrote; it solves nothing (the weights are solved at open). Most of \
                 the statistics' 16 bytes are sign extension: a variable-length encoding would \
                 shrink `stats.bin` by an estimated 40 %, and its write and sync with it; that \
                 is a change of the state dir's format.\n",
                100.0 * c.close / c.rewrite,
                fmt_secs(c.close),
                ((p * (p + 1) / 2 + p * c.c) * 16) as f64 / 1e6,
            );
        }
        let o = &self.open;
        if o.open > 0.1 {
            any = true;
            s += &format!(
                "- **Open** ({} at n = {}, d = {}, state dir {:.0} MB; reading its files alone \
                 takes {}): `Head::open` checks every bucket file's digest, streaming its records \
                 (n·d values) through one buffer, while another thread solves the canonical \
                 weights from the statistics (O(d³)). Only the statistics, the factor and an id → \
                 slot index are needed to serve and to forget; checking a sample's record only \
                 when it is read (forget, recovery, a compaction) would keep open at O(d² + n), \
                 at the price of finding a damaged record later.\n",
                fmt_secs(o.open),
                fmt_n(o.n),
                o.d,
                o.bytes as f64 / 1e6,
                fmt_secs(o.read)
            );
        }
        let e = &self.encryption;
        let added = e.learn_encrypted / e.learn_plain - 1.0;
        if added > 0.10 || e.forget_added > 0.2e-3 || e.open_encrypted > 0.1 {
            any = true;
            s += &format!(
                "- **Encryption** (learn {:+.1} %, forget one sample {}, open {}): with a key, \
                 a learn seals each record and the journal entry (XChaCha20-Poly1305, one pass \
                 over the bytes it writes), a forget seals its entry, and open decrypts \
                 `stats.bin` (the statistics: O(d²) bytes) besides checking \
                 every bucket file. The differences are milliseconds on a shared machine: \
                 compare them with the spread of the rows above before reading much into \
                 them.\n",
                100.0 * added,
                fmt_signed_secs(e.forget_added),
                fmt_secs(e.open_encrypted),
            );
        }
        if !any {
            s += "None.\n";
        }
        s
    }

    fn targets_section(&self) -> String {
        let mut s = String::from(
            "## Targets (DESIGN.md)\n\n| target | goal | measured | |\n| --- | --- | --- | --- |\n",
        );
        let worst = self
            .predict
            .iter()
            .map(|r| r.lethe / r.bare)
            .fold(0.0, f64::max);
        s += &format!(
            "| predict, core + head vs bare ONNX Runtime (worst row) | ≤ 1.03× | {} | {} |\n",
            fmt_ratio(worst),
            met(worst <= 1.03)
        );
        if let Some(h) = self.headline() {
            let at = format!("n = {}, d = {}, C = {}, one sample", fmt_n(h.n), h.d, h.c);
            let r = h.refit / h.forget;
            s += &format!(
                "| forget vs closed-form refit ({at}) | ≥ 1000× | {} ({} vs {}) | {} |\n",
                fmt_ratio(r),
                fmt_secs(h.forget),
                fmt_secs(h.refit),
                met(r >= 1000.0)
            );
            let r = h.stats_resolve / h.forget;
            s += &format!(
                "| forget vs f64 sufficient-statistics re-solve ({at}) | ≥ 30× | {} ({} vs {}) | {} |\n",
                fmt_ratio(r),
                fmt_secs(h.forget),
                fmt_secs(h.stats_resolve),
                met(r >= 30.0)
            );
            if let Some(retrain) = h.retrain {
                let r = retrain / h.forget;
                s += &format!(
                    "| forget vs full retrain pipeline ({at}; extrapolated) | ≥ 10^5× | {} ({} vs {}) | {} |\n",
                    fmt_ratio(r),
                    fmt_secs(h.forget),
                    fmt_secs(retrain),
                    met(r >= 1e5)
                );
            }
        }
        let b = &self.back_to_back;
        let rate = b.count as f64 / b.seconds;
        s += &format!(
            "| sustained one-sample forgets, durable, back to back (n = {}, d = {}, C = {}) | ≥ 500 / s | {:.0} / s | {} |\n",
            fmt_n(b.n),
            b.d,
            b.c,
            rate,
            met(rate >= 500.0)
        );
        if let Some(h) = self.headline() {
            if let Some(r) = self
                .forget
                .iter()
                .find(|r| (r.n, r.d, r.c, r.k) == (h.n, h.d, h.c, 1000))
            {
                let what = format!(
                    "forget of 1 000 samples vs the f64 sufficient-statistics re-solve (n = {}, \
                     d = {}, C = {})",
                    fmt_n(r.n),
                    r.d,
                    r.c
                );
                s += &against_resolve(&what, r);
            }
        }
        if let Some(w) = self.worst_against_resolve() {
            let what = format!(
                "a forget of any k vs the f64 sufficient-statistics re-solve (worst row of the \
                 sweep: n = {}, d = {}, C = {}, k = {})",
                fmt_n(w.n),
                w.d,
                w.c,
                w.k
            );
            s += &against_resolve(&what, w);
        }
        for l in self.learn.iter().filter(|l| l.batch > 1) {
            let share = l.durable / l.core;
            s += &format!(
                "| learn: head's share of the core's time ({}, batch {}, durable) | ≤ 10 % | {:.1} % | {} |\n",
                l.bundle,
                l.batch,
                100.0 * share,
                met(share <= 0.10)
            );
        }
        let o = &self.open;
        s += &format!(
            "| open a closed state dir (n = {}, d = {}), beyond the ORT session | ≤ 100 ms | {} | {} |\n",
            fmt_n(o.n),
            o.d,
            fmt_secs(o.open),
            met(o.open <= 0.1)
        );
        let c = &self.close;
        s += &format!(
            "| close after one forget (n = {}, d = {}) vs rewriting every file | ≤ 10 % | {:.1} % ({} vs {}) | {} |\n",
            fmt_n(c.n),
            c.d,
            100.0 * c.close / c.rewrite,
            fmt_secs(c.close),
            fmt_secs(c.rewrite),
            met(c.close <= 0.1 * c.rewrite)
        );
        let e = &self.encryption;
        let learn = e.learn_encrypted / e.learn_plain - 1.0;
        let forget = e.forget_added;
        s += &format!(
            "| encryption: added to a durable `learn_features` ({}, batch {}) | ≤ 10 % | {:+.1} % | {} |\n\
             | encryption: added to a durable forget of one sample (d = {}) | ≤ 0.2 ms | {} | {} |\n\
             | open an encrypted closed state dir (n = {}, d = {}), beyond the ORT session | ≤ 100 ms | {} | {} |\n\n",
            e.bundle,
            e.batch,
            100.0 * learn,
            met(learn <= 0.10),
            e.d,
            fmt_signed_secs(forget),
            met(forget <= 0.2e-3),
            fmt_n(e.n),
            e.d,
            fmt_secs(e.open_encrypted),
            met(e.open_encrypted <= 0.1)
        );
        s
    }

    fn predict_section(&self) -> String {
        let mut s = format!(
            "## Predict: head overhead\n\n\
             `Head::predict` (Lethe's core run, the head's f32 forward pass, core logits mapped \
             onto the head's classes) vs a bare ONNX Runtime session of the same `core.onnx` with \
             the same threads, reading every output. Inputs are real MNIST test digits, \
             preprocessed per each manifest, for the image bundles; for the text bundle, real \
             test tweets in consecutive batches, each padded to its longest tweet as Lethe pads, \
             taken in turn from {TEXT_BATCHES} batches so that the times cover real sentence \
             lengths: Lethe tokenizes them once beforehand, and both sides get the same token \
             tensors (`Head::predict_tensors`). The two are timed in alternating blocks (the \
             first call of a block discarded: ONNX Runtime's thread pools spin after a run and \
             slow down another session's run right after). The last column times the head's \
             forward pass alone (`Head::predict_features`: z + φ Wᵀ + b on the core's outputs), \
             which is what the head adds beyond Lethe's handling of the core run.\n\n\
             | bundle | batch | bare ORT | Lethe predict | ratio | timings each | the head's part alone |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n"
        );
        for r in &self.predict {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} ({:.2} %) |\n",
                r.bundle,
                r.batch,
                fmt_secs(r.bare),
                fmt_secs(r.lethe),
                fmt_ratio(r.lethe / r.bare),
                r.repeats,
                fmt_secs(r.head),
                100.0 * r.head / r.bare
            );
        }
        let text: Vec<String> = self
            .predict
            .iter()
            .filter_map(|r| {
                r.text.map(|(tokens, tokenize)| {
                    format!(
                        "{} at batch {} (batches padded to {tokens:.1} tokens on average)",
                        fmt_secs(tokenize),
                        r.batch
                    )
                })
            })
            .collect();
        if !text.is_empty() {
            s += &format!(
                "\nTokenizing the tweets (`Core::encode_text`, which `Head::predict_text` runs \
                 before the core; in neither column above): {}.\n",
                text.join("; ")
            );
        }
        s + "\n"
    }

    fn forget_section(&self) -> String {
        let mut s = String::from(
            "## Forget\n\n\
             - **Lethe forget**: `Head::forget` returning on a durable state dir (the forgotten \
             records overwritten and synced), the weights served from then on.\n\
             - **in memory**: the same on an in-memory head holding the same samples (no \
             state dir, so no `fsync`), for the first (d, C) only.\n\
             - **canonical**: from the forget call until `Head::weights` returns the canonical \
             weights (those `lethe verify` compares with a recomputation from scratch; the \
             background re-solve, finished on the caller's thread).\n\
             - **stats re-solve**: the stronger baseline: f64 sufficient statistics A = XᵀX \
             and B = XᵀT kept in memory, downdated by the k samples' rows on each forget, then \
             A + λI factored by Cholesky and solved (faer, sequential). No O(n) work per forget, \
             but not exact: its f64 sums depend on the order of changes.\n\
             - **refit**: the head refitted in closed form from the n − k remaining features already in \
             memory as f64; A = XᵀX + λI (lower triangle) and B = XᵀT with faer's GEMM on every \
             core (one block of rows per core), then Cholesky and solve.\n\
             - **full retrain**: the core re-run over the n − k remaining inputs plus the refit. \
             The core time is **extrapolated**: mobilenetv2-imagenet's measured per-sample time \
             (bare ONNX Runtime, largest batch measured) × (n − k); nothing is re-run. Only for \
             d = 1280, that core's width.\n\n\
             Features are **synthetic** (uniform in [0, 4), like post-ReLU6 features; one-hot \
             targets, λ = 1): timing does not depend on their values. The bundle is synthetic \
             too: its core is an ONNX `Identity` graph (scripts/make_identity_core.py), so that d and C \
             can be chosen freely, while the head and its state dir are exactly those of a real \
             bundle. Each (d, C) head is grown through its n values; at each, k random samples \
             are forgotten and learned back, repeatedly. Every forget is timed with the head's \
             background re-solve idle (the one before it finished); back-to-back forgets are \
             below the table.\n\n",
        );
        let mut pairs: Vec<(usize, usize)> = self.forget.iter().map(|r| (r.d, r.c)).collect();
        pairs.dedup();
        let pairs: Vec<String> = pairs
            .iter()
            .map(|(d, c)| {
                let ns: Vec<String> = self
                    .forget
                    .iter()
                    .filter(|r| (r.d, r.c) == (*d, *c) && r.k == 1)
                    .map(|r| fmt_n(r.n))
                    .collect();
                format!("d = {d}, C = {c} at n ∈ {{{}}}", ns.join(", "))
            })
            .collect();
        s += &if self.quick {
            format!("Sizes measured: {}.\n\n", pairs.join("; "))
        } else {
            format!(
                "The grid is a cross through d ∈ {{128, 1280, 2048}} × C ∈ {{10, 100, 1000}} × \
                 n ∈ {{1k, 10k, 50k}} rather than its full product (which would take about \
                 twice as long): {}; k ∈ {{1, 100, 1000}} everywhere (those below n).\n\n",
                pairs.join("; ")
            )
        };
        s += &format!(
            "mobilenetv2-imagenet's core: {} per sample (batch {}). The refit baseline's weights \
             agree with Lethe's to {:.1e} (max relative difference; Lethe quantizes features \
             to 2^-21).\n\n",
            fmt_secs(self.core_per_sample),
            self.core_batch,
            self.baseline_agreement
        );
        s += "| n | d | C | k | Lethe forget | in memory | canonical | stats re-solve | refit | full retrain | stats re-solve / forget | refit / forget | refit / canonical | retrain / forget |\n\
              | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
        for r in &self.forget {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                fmt_n(r.n),
                r.d,
                r.c,
                r.k,
                fmt_secs(r.forget),
                r.memory.map_or("–".into(), fmt_secs),
                fmt_secs(r.canonical),
                fmt_secs(r.stats_resolve),
                fmt_secs(r.refit),
                r.retrain.map_or("–".into(), fmt_secs),
                fmt_ratio(r.stats_resolve / r.forget),
                fmt_ratio(r.refit / r.forget),
                fmt_ratio(r.refit / r.canonical),
                r.retrain.map_or("–".into(), |t| fmt_ratio(t / r.forget)),
            );
        }
        let (d, c) = (self.breakdown.d, self.breakdown.c);
        let b = &self.back_to_back;
        s += &format!(
            "\n![Forget latency vs n, log-log: d = {d}, C = {c}]({PLOT_FILE})\n\n\
             **Back to back**: {} one-sample forgets issued one after another on the durable \
             head at n = {}, d = {}, C = {}, each durable before it returned, took {} in all: \
             {:.0} forgets per second ({} each). The canonical weights were ready {} after \
             the last one returned (`Head::weights`; the re-solves in the background jump to \
             the newest change instead of queueing).\n\n\
             **Where a one-sample forget's time goes**, in situ: the phases of real calls on \
             the durable head at n = {}, d = {}, C = {} (trace spans recorded by the bench; \
             medians of phases that partly run at the same time, so they need not add up to \
             the call's median):\n\n{}\n\
             On this machine's disk, `fdatasync` after overwriting one record in place took {}, \
             after appending one to a file {} (the file's size changes, so the file system \
             commits metadata too); the probes ranged from {} to {}. How many of each a \
             durable forget makes is the store's protocol (src/store.rs).\n\n",
            b.count,
            fmt_n(b.n),
            b.d,
            b.c,
            fmt_secs(b.seconds),
            b.count as f64 / b.seconds,
            fmt_secs(b.seconds / b.count as f64),
            fmt_secs(b.canonical),
            fmt_n(self.phases.n),
            self.phases.d,
            self.phases.c,
            self.phases_table(),
            fmt_secs(self.breakdown.fsync),
            fmt_secs(self.breakdown.fsync_append),
            fmt_secs(self.breakdown.fsync_range.0),
            fmt_secs(self.breakdown.fsync_range.1),
        );
        s
    }

    /// The in-situ phases as a Markdown table.
    fn phases_table(&self) -> String {
        let p = &self.phases;
        let mut s = String::from("| phase | what | median |\n| --- | --- | --- |\n");
        for (name, seconds) in &p.phases {
            s += &format!(
                "| {name} | {} | {} |\n",
                phase_meaning(name),
                fmt_secs(*seconds)
            );
        }
        s + &format!("| the whole call | | {} |\n", fmt_secs(p.call))
    }

    /// The in-situ phases in one line.
    fn phases_inline(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .phases
            .iter()
            .map(|(name, seconds)| format!("{name} {}", fmt_secs(*seconds)))
            .collect();
        parts.join(", ")
    }

    fn learn_section(&self) -> String {
        let mut s = String::from(
            "## Learn: the head's share\n\n\
             For one batch of real digits: the core's inference (`Head::core_features`), then \
             the head's `learn_features` on those features, durable (state dir, synced) and in \
             memory, each right after a run of the core, as an application learns what it has \
             just run the core on (ONNX Runtime's threads keep spinning for a while after a \
             run, and slow the head's own threads then). The last column is `Head::weights` \
             called right after the durable learn returned: the wait until the canonical \
             weights are ready (their re-solve starts on another thread when the learn \
             returns).\n\n\
             | bundle | batch | core | head, durable | share | head, in memory | share | canonical weights ready after |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for l in &self.learn {
            s += &format!(
                "| {} | {} | {} | {} | {:.1} % | {} | {:.1} % | {} |\n",
                l.bundle,
                l.batch,
                fmt_secs(l.core),
                fmt_secs(l.durable),
                100.0 * l.durable / l.core,
                fmt_secs(l.memory),
                100.0 * l.memory / l.core,
                fmt_secs(l.resolve)
            );
        }
        s + "\n"
    }

    fn close_section(&self) -> String {
        let c = &self.close;
        format!(
            "## Close\n\n\
             On the closed state dir of the forget sweep (n = {}, d = {}, C = {}): `Head::close` \
             right after forgetting one sample (the compaction rewrites the one bucket file \
             that changed and `stats.bin`, the exact statistics, each synced; nothing is \
             solved), and what `lethe forget --ids ID` does \
             (opening the core and the head, the forget, the close), in this process. Next to them, \
             rewriting every file of the state dir (read, write anew, sync): what a close cost \
             when one samples file held every sample.\n\n\
             | close after one forget | lethe forget | rewriting every file | close / rewrite |\n\
             | --- | --- | --- | --- |\n\
             | {} | {} | {} | {:.1} % |\n\n",
            fmt_n(c.n),
            c.d,
            c.c,
            fmt_secs(c.close),
            fmt_secs(c.cli_forget),
            fmt_secs(c.rewrite),
            100.0 * c.close / c.rewrite
        )
    }

    fn encryption_section(&self) -> String {
        let e = &self.encryption;
        format!(
            "## Encryption\n\n\
             The same durable calls on a state dir without a key and on one with a key (DESIGN.md \
             G9: every record, the statistics, factor and weights, and the journal sealed with \
             XChaCha20-Poly1305), alternating. The learn is `learn_features` on a batch of real \
             digits' core outputs; open and forget use a synthetic head with n = {} samples, \
             d = {}, C = {}, filled alike (the same samples, by the same learn calls) in both \
             dirs. The forgets run in {} \
             pairs, one on each dir back to back (which goes first alternates): their row gives \
             each dir's median and, as what a key adds, the median of the differences within \
             the pairs.\n\n\
             | call | without a key | with a key | added |\n\
             | --- | --- | --- | --- |\n\
             | learn ({}, batch {}) | {} | {} | {:+.1} % |\n\
             | open the closed state dir | {} | {} | {} |\n\
             | forget one sample | {} | {} | {} |\n\n",
            fmt_n(e.n),
            e.d,
            e.c,
            e.pairs,
            e.bundle,
            e.batch,
            fmt_secs(e.learn_plain),
            fmt_secs(e.learn_encrypted),
            100.0 * (e.learn_encrypted / e.learn_plain - 1.0),
            fmt_secs(e.open_plain),
            fmt_secs(e.open_encrypted),
            fmt_signed_secs(e.open_encrypted - e.open_plain),
            fmt_secs(e.forget_plain),
            fmt_secs(e.forget_encrypted),
            fmt_signed_secs(e.forget_added)
        )
    }

    fn open_section(&self) -> String {
        let o = &self.open;
        format!(
            "## Open\n\n\
             `Head::open` of a closed state dir with n = {} samples, d = {}, C = {} ({:.0} MB on \
             disk, warm page cache), with the core already open: the time beyond creating the \
             ONNX Runtime session, including the canonical solve of the weights from the exact \
             statistics (`stats.bin` holds nothing else). For scale: reading every file of the state dir into memory \
             (`std::fs::read`), and creating mobilenetv2-imagenet's session (`Core::open`, which \
             also checks the core's sha256 and graph).\n\n\
             | n | d | C | state dir | Head::open | read the files | Core::open (mobilenetv2-imagenet) |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n\
             | {} | {} | {} | {:.0} MB | {} | {} | {} |\n\n",
            fmt_n(o.n),
            o.d,
            o.c,
            o.bytes as f64 / 1e6,
            fmt_n(o.n),
            o.d,
            o.c,
            o.bytes as f64 / 1e6,
            fmt_secs(o.open),
            fmt_secs(o.read),
            fmt_secs(o.session)
        )
    }
}

/// What a phase of a learn or forget call does (the library's span names).
fn phase_meaning(name: &str) -> &'static str {
    match name {
        "store" => "checks, and the forgotten records read from the state dir",
        "commit" => {
            "the journal entry written and synced, the records overwritten and synced (for a large \
             change, beside stats and solve, which run on another thread then)"
        }
        "stats" => "the exact integer statistics updated",
        "solve" => {
            "the weights' update: the Woodbury correction from the background's inverse (or \
             through the factor, before there is one), the rank-k update of the factor, or the \
             re-solve"
        }
        "publish" => "the new weights made the ones predictions use",
        _ => "",
    }
}
