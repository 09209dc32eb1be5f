//! The `lethe` command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use ndarray::{Array1, ArrayD, IxDyn};

use lethe::{data, Bundle, Core, CoreOptions, Head, HeadOptions};
use lethe::{Error, Result};

/// Lethe: an inference runtime that can forget, exactly.
#[derive(Debug, Parser)]
#[command(name = "lethe", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// ONNX Runtime library to load (default: ORT_DYLIB_PATH, then .lethe/ort/ from scripts/setup.sh).
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
    #[arg(long, global = true, default_value_t = 0)]
    pub threads: usize,
    /// Where the core and head run: cpu, cuda or auto (the GPU when usable, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    pub backend: lethe::Backend,
    /// Fail instead of falling back to the CPU when the GPU cannot be used.
    #[arg(long, global = true)]
    pub require_gpu: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Learn, forget and forget-all on real MNIST digits with the bundled mnist-core, next to
    /// heads retrained from scratch.
    Demo(crate::demo::DemoArgs),
    /// Benchmarks against baselines measured in the same run; writes docs/BENCHMARKS.md and a
    /// plot.
    Bench(crate::bench::BenchArgs),
    /// The forgetting evaluation on real digits, against retraining from scratch and
    /// scikit-learn; writes docs/EVALUATION.md.
    Eval(crate::eval::EvalArgs),
    /// Run a bundle's core and write one of its outputs (features or core logits) as .npy.
    Features {
        #[arg(long, default_value = "models/mnist-core")]
        bundle: PathBuf,
        /// Preprocessed inputs, float32, first axis = samples.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the features (float32 [n, d]).
        #[arg(long)]
        out: PathBuf,
        /// Which output: a features output or the core logits (default: the default features).
        #[arg(long)]
        features: Option<String>,
    },
    /// Bundle tools.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Learn samples into a head's state dir (created if absent).
    Learn {
        #[command(flatten)]
        head: HeadArgs,
        /// Preprocessed inputs, float32, first axis = samples.
        #[arg(long)]
        input: PathBuf,
        /// Class indices, integer [n].
        #[arg(long)]
        labels: PathBuf,
        /// Caller-chosen sample ids, integer [n].
        #[arg(long)]
        ids: PathBuf,
    },
    /// Forget samples by id, exactly.
    Forget {
        #[command(flatten)]
        head: HeadArgs,
        /// Comma-separated ids.
        #[arg(long, value_delimiter = ',', required_unless_present = "ids_file")]
        ids: Vec<u64>,
        /// Ids as an integer .npy file or a text file with one id per line.
        #[arg(long, conflicts_with = "ids")]
        ids_file: Option<PathBuf>,
    },
    /// Forget everything: the head predicts exactly the core's logits again.
    ForgetAll {
        #[command(flatten)]
        head: HeadArgs,
    },
    /// Predict logits for inputs.
    Predict {
        #[command(flatten)]
        head: HeadArgs,
        #[arg(long)]
        input: PathBuf,
        /// Where to write the logits (float32 [n, C]); without it, top-1 classes are printed.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the canonical weights W (C × d) and b (C) in f64 as .npz.
    Weights {
        #[command(flatten)]
        head: HeadArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a head's settings and counts.
    Info {
        #[command(flatten)]
        head: HeadArgs,
    },
    /// Recompute the head from its stored samples from scratch and compare with what is served.
    Verify {
        #[command(flatten)]
        head: HeadArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Check a bundle: manifest fields, core sha256, and the ONNX graph against the manifest.
    Check { dir: PathBuf },
}

/// Which head to open.
#[derive(Debug, Args)]
pub struct HeadArgs {
    /// The head's state dir.
    #[arg(long)]
    pub state: PathBuf,
    /// The bundle the head belongs to.
    #[arg(long, default_value = "models/mnist-core")]
    pub bundle: PathBuf,
    /// The features output to linearize at (only when creating the state dir).
    #[arg(long)]
    pub features: Option<String>,
    /// Ridge strength λ (only when creating the state dir; default from the manifest).
    #[arg(long)]
    pub lambda: Option<f64>,
}

impl Global {
    pub fn core_options(&self) -> CoreOptions {
        CoreOptions {
            ort_library: self.ort_library.clone(),
            intra_threads: self.threads,
            backend: lethe::BackendOptions {
                backend: self.backend,
                require_gpu: self.require_gpu,
                ..Default::default()
            },
        }
    }
}

impl HeadArgs {
    fn open(&self, global: &Global) -> Result<Head> {
        let core = Arc::new(Core::open(&self.bundle, &global.core_options())?);
        let options = HeadOptions {
            features: self.features.clone(),
            lambda: self.lambda,
            ..Default::default()
        };
        Head::open(core, &self.state, &options)
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Demo(args) => crate::demo::run(g, &args),
        Command::Bench(args) => crate::bench::run(g, &args).map(drop),
        Command::Eval(args) => crate::eval::run(g, &args).map(drop),
        Command::Features {
            bundle,
            input,
            out,
            features,
        } => {
            let core = Core::open(&bundle, &g.core_options())?;
            let logits = core
                .bundle()
                .manifest
                .core_logits
                .as_ref()
                .map(|cl| &cl.output);
            let name = match features {
                Some(name) if Some(&name) == logits => name,
                other => core.bundle().features(other.as_deref())?.output.clone(),
            };
            let (n, x) = data::samples_of(data::read_f32(&input)?);
            let start = Instant::now();
            let phi = run_in_chunks(&core, &x, n, &name)?;
            data::write(&out, &phi)?;
            eprintln!(
                "wrote {} features [{n}, {}] to {} ({:.2} s)",
                name,
                phi.shape()[1],
                out.display(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Bundle(BundleCommand::Check { dir }) => {
            let bundle = Bundle::open(&dir)?;
            let core = Core::from_bundle(bundle, &g.core_options())?;
            let m = &core.bundle().manifest;
            println!("bundle {} ok: {}", m.name, m.description);
            println!("  core      {} (sha256 {})", m.core.file, m.core.sha256);
            println!(
                "  input     {} {:?} {:?}",
                m.inputs[0].name, m.inputs[0].dtype, m.inputs[0].shape
            );
            for f in &m.features {
                let default = if f.output == m.default_features {
                    " (default)"
                } else {
                    ""
                };
                println!("  features  {} d = {}{default}", f.output, f.dim);
            }
            match &m.core_logits {
                Some(cl) => println!("  logits    {} for classes {:?}", cl.output, cl.classes),
                None => println!("  logits    none"),
            }
            println!("  classes   {}", m.classes.join(" "));
            Ok(())
        }
        Command::Learn {
            head,
            input,
            labels,
            ids,
        } => {
            let h = head.open(g)?;
            let (n, x) = data::samples_of(data::read_f32(&input)?);
            let labels: Vec<u32> = data::read_ids(&labels)?
                .into_iter()
                .map(|l| {
                    u32::try_from(l)
                        .map_err(|_| Error::InvalidInput(format!("label {l} is out of range")))
                })
                .collect::<Result<_>>()?;
            let ids = data::read_ids(&ids)?;
            if ids.len() != n || labels.len() != n {
                return Err(Error::InvalidInput(format!(
                    "{n} inputs, {} labels, {} ids: they must match",
                    labels.len(),
                    ids.len()
                )));
            }
            let start = Instant::now();
            // One call: all-or-nothing. Run the core in chunks with progress first.
            let (phi, z) = core_features_in_chunks(&h, &x, n)?;
            h.learn_features(&ids, &phi, &z, &labels)?;
            let samples = h.info().samples;
            h.close()?;
            eprintln!(
                "learned {n} samples ({samples} in the head) in {:.2} s",
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Forget {
            head,
            ids,
            ids_file,
        } => {
            let ids = match ids_file {
                Some(path) => read_id_file(&path)?,
                None => ids,
            };
            let h = head.open(g)?;
            let start = Instant::now();
            h.forget(&ids)?;
            let took = start.elapsed();
            let samples = h.info().samples;
            h.close()?;
            eprintln!(
                "forgot {} samples ({samples} left) in {:.3} ms",
                ids.len(),
                took.as_secs_f64() * 1e3
            );
            Ok(())
        }
        Command::ForgetAll { head } => {
            let h = head.open(g)?;
            h.forget_all()?;
            h.close()?;
            eprintln!("forgot all samples: the head now predicts the core's logits");
            Ok(())
        }
        Command::Predict { head, input, out } => {
            let h = head.open(g)?;
            let (n, x) = data::samples_of(data::read_f32(&input)?);
            let (phi, z) = core_features_in_chunks(&h, &x, n)?;
            let logits = h.predict_features(&phi, &z)?;
            match out {
                Some(path) => {
                    data::write(&path, &logits.clone().into_dyn())?;
                    eprintln!(
                        "wrote logits [{n}, {}] to {}",
                        logits.ncols(),
                        path.display()
                    );
                }
                None => {
                    for row in logits.rows() {
                        println!(
                            "{}",
                            h.spec().classes[argmax(row.as_slice().unwrap_or(&row.to_vec()))]
                        );
                    }
                }
            }
            h.close()
        }
        Command::Weights { head, out } => {
            let h = head.open(g)?;
            let w = h.weights()?;
            let f = std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?;
            let mut npz = ndarray_npy::NpzWriter::new(f);
            npz.add_array("W", &w.w)
                .and_then(|_| npz.add_array("b", &Array1::from(w.b.clone())))
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", out.display())))?;
            npz.finish()
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", out.display())))?;
            eprintln!(
                "wrote W [{}, {}] and b [{}] to {}",
                w.w.nrows(),
                w.w.ncols(),
                w.b.len(),
                out.display()
            );
            h.close()
        }
        Command::Info { head } => {
            let h = head.open(g)?;
            let info = h.info();
            let s = &info.spec;
            println!("state dir   {}", head.state.display());
            println!(
                "bundle      {}",
                h.core()
                    .map(|c| c.bundle().manifest.name.clone())
                    .unwrap_or_default()
            );
            println!("features    {} (d = {})", s.features, s.dim);
            println!("classes     {}", s.classes.join(" "));
            println!("lambda      {}", s.lambda);
            println!(
                "target      scale {}, fixed point 2^-{}",
                s.target_scale, s.fixed.frac_bits
            );
            println!("backend     {}", info.backend);
            println!("samples     {}", info.samples);
            let counts: Vec<String> = s
                .classes
                .iter()
                .zip(&info.class_counts)
                .map(|(c, n)| format!("{c}:{n}"))
                .collect();
            println!("per class   {}", counts.join(" "));
            h.close()
        }
        Command::Verify { head } => {
            let h = head.open(g)?;
            let start = Instant::now();
            let report = h.verify()?;
            println!(
                "{} samples: statistics {}, canonical weights {}, served weights {} ({:.2} s)",
                report.samples,
                if report.stats_equal {
                    "equal"
                } else {
                    "DIFFER"
                },
                if report.weights_identical {
                    "bit-identical"
                } else {
                    "DIFFER"
                },
                if report.served_identical {
                    "bit-identical"
                } else {
                    "DIFFER"
                },
                start.elapsed().as_secs_f64()
            );
            h.close()?;
            if report.ok() {
                Ok(())
            } else {
                Err(Error::state(
                    &head.state,
                    "verification failed: what is served differs from a recomputation",
                ))
            }
        }
    }
}

/// Accuracy (%) of `logits` on `rows` (NaN for no rows).
pub fn accuracy(logits: &ndarray::Array2<f32>, labels: &[u32], rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    let hits = rows
        .iter()
        .filter(|&&r| argmax(logits.row(r).as_slice().expect("contiguous")) == labels[r] as usize)
        .count();
    100.0 * hits as f64 / rows.len() as f64
}

/// The index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

const CHUNK: usize = 256;

/// The per-sample input length, after checking that `x` holds `n` samples.
fn check_input_len(core: &Core, x: &[f32], n: usize) -> Result<usize> {
    let per = core.input_len();
    if x.len() != n * per {
        return Err(Error::InvalidInput(format!(
            "expected {n} samples × {per} values, got {} values",
            x.len()
        )));
    }
    Ok(per)
}

fn run_in_chunks(core: &Core, x: &[f32], n: usize, name: &str) -> Result<ArrayD<f32>> {
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

/// Runs a head's core over many inputs in chunks, with progress.
pub fn core_features_in_chunks(
    h: &Head,
    x: &[f32],
    n: usize,
) -> Result<(ndarray::Array2<f32>, ndarray::Array2<f32>)> {
    let spec = h.spec();
    let core = h
        .core()
        .ok_or_else(|| Error::InvalidInput("head has no core".into()))?;
    let per = check_input_len(core, x, n)?;
    let bar = crate::progress::bar(n as u64, "running the core");
    let mut phi = ndarray::Array2::<f32>::zeros((n, spec.dim));
    let mut z = ndarray::Array2::<f32>::zeros((n, spec.num_classes()));
    for start in (0..n).step_by(CHUNK) {
        let k = CHUNK.min(n - start);
        let (p, zz) = h.core_features(&x[start * per..(start + k) * per], k)?;
        phi.slice_mut(ndarray::s![start..start + k, ..]).assign(&p);
        z.slice_mut(ndarray::s![start..start + k, ..]).assign(&zz);
        bar.inc(k as u64);
    }
    bar.finish_and_clear();
    Ok((phi, z))
}

fn read_id_file(path: &Path) -> Result<Vec<u64>> {
    if path.extension().is_some_and(|e| e == "npy") {
        return data::read_ids(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::InvalidInput(format!("{}: {t:?} is not an id", path.display())))
        })
        .collect()
}
