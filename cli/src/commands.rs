//! The `lethe` command line: its arguments, and one function per command.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use ndarray::Array1;
use zeroize::Zeroizing;

use crate::batches::{check_counts, core_features, core_output, read_labels, InputArgs, Samples};
use crate::bench::BenchArgs;
use crate::demo::DemoArgs;
use crate::eval::EvalArgs;
use crate::global::Global;
use crate::logits::argmax;
use crate::receipts::{self, VerifyArgs};
use crate::state::{bundle_for, Creation};
use lethe::bundle::Padding;
use lethe::store::recorded_bundle;
use lethe::{data, Bundle, Core, Head, HeadOptions, StateKey};
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Learn, forget and forget-all on real MNIST digits with the bundled mnist-core, next to
    /// heads retrained from scratch.
    Demo(DemoArgs),
    /// Benchmarks against baselines measured in the same run; writes docs/BENCHMARKS.md and a
    /// plot.
    Bench(BenchArgs),
    /// The forgetting evaluation on real digits, against retraining from scratch and
    /// scikit-learn; writes docs/EVALUATION.md.
    Eval(EvalArgs),
    /// Run a bundle's core and write one of its outputs (features or core logits) as .npy.
    Features(FeaturesArgs),
    /// Bundle tools.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Learn samples into a head's state dir (created if absent).
    Learn(LearnArgs),
    /// Forget samples by id, exactly.
    Forget(ForgetArgs),
    /// Forget everything: the head predicts exactly the core's logits again.
    ForgetAll(ForgetAllArgs),
    /// Predict logits for inputs.
    Predict(PredictArgs),
    /// Write the canonical weights W (C × d) and b (C) in f64 as .npz.
    Weights(WeightsArgs),
    /// Print a head's settings and counts.
    Info(HeadArgs),
    /// Recompute the head from its stored samples from scratch and compare with what is served.
    Verify(HeadArgs),
    /// Seal an encrypted state dir under a new key (--key-file: the current one): once this
    /// succeeds, only the new key opens it; destroy the old key to make everything ever
    /// written under it unreadable.
    Rekey(RekeyArgs),
    /// Erase a state dir: overwrite every Lethe file in it with zeros, sync, remove it, then the
    /// dir. Works on a state dir that cannot be opened (corrupt, another format version, a full
    /// disk); refuses one a head has open.
    Erase(EraseArgs),
    /// Receipts (from `--receipt`).
    #[command(subcommand)]
    Receipt(ReceiptCommand),
}

#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Check a receipt: relearn the retained samples in a fresh head that keeps nothing on
    /// disk and compare its receipt; optionally check that forgotten ids are absent.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// The bundle whose core to run.
    #[arg(long, default_value = "models/mnist-core")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the features (float32 [n, d]).
    #[arg(long)]
    pub out: PathBuf,
    /// Which output: a features output (or several joined by `+`, concatenated) or the core
    /// logits (default: the default features).
    #[arg(long)]
    pub features: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Check a bundle: manifest fields, core sha256, and the ONNX graph against the manifest.
    Check(BundleCheckArgs),
}

#[derive(Debug, Args)]
pub struct BundleCheckArgs {
    /// The bundle's folder (manifest.json and the core).
    pub dir: PathBuf,
}

/// Which head to open.
#[derive(Debug, Args)]
pub struct HeadArgs {
    /// The head's state dir (only `lethe learn` creates one).
    #[arg(long)]
    pub state: PathBuf,
    /// The bundle the head belongs to [default: the one the state dir records, found at
    /// models/<its name>; for a new state dir, models/mnist-core].
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The features output to linearize at, or several joined by `+` to concatenate them, e.g.
    /// `features+conv_features` (when creating the state dir; otherwise it must be the
    /// recorded one).
    #[arg(long)]
    pub features: Option<String>,
    /// Ridge strength λ (when creating the state dir, default from the manifest; otherwise it
    /// must be the recorded one).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// A file holding the state dir's key: exactly 32 bytes, raw (e.g. exported by the
    /// platform's key store). A new state dir is created encrypted with it; an encrypted one
    /// needs it, and one created without a key refuses one.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    /// A file holding the new key: exactly 32 bytes, raw.
    #[arg(long)]
    pub new_key_file: PathBuf,
}

/// The key in `path`: exactly [`StateKey::LEN`] bytes, read into a buffer wiped when dropped,
/// and at most one byte more, so that a longer file (or a device) is refused unread.
fn read_key(path: &Path) -> Result<StateKey> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Zeroizing::new([0u8; StateKey::LEN + 1]);
    let mut len = 0;
    while len < bytes.len() {
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if len > StateKey::LEN {
        return Err(Error::Key(format!(
            "{}: longer than a key ({} bytes)",
            path.display(),
            StateKey::LEN
        )));
    }
    StateKey::from_slice(&bytes[..len]).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Class indices, integer [n].
    #[arg(long)]
    pub labels: PathBuf,
    /// Caller-chosen sample ids, integer [n].
    #[arg(long)]
    pub ids: PathBuf,
    /// Write the head's receipt after the learn to this file (JSON).
    #[arg(long)]
    pub receipt: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    /// Comma-separated ids.
    #[arg(long, value_delimiter = ',', required_unless_present = "ids_file")]
    pub ids: Vec<u64>,
    /// Ids as an integer .npy file or a text file with one id per line.
    #[arg(long, conflicts_with = "ids")]
    pub ids_file: Option<PathBuf>,
    /// Write the head's receipt after the forget to this file (JSON).
    #[arg(long)]
    pub receipt: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ForgetAllArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    /// Write the head's receipt after the forget-all to this file (JSON).
    #[arg(long)]
    pub receipt: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the logits (float32 [n, C]); without it, top-1 classes are printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WeightsArgs {
    #[command(flatten)]
    pub head: HeadArgs,
    /// Where to write the weights (.npz with W and b).
    #[arg(long)]
    pub out: PathBuf,
}

/// The bundle of a new state dir when `--bundle` is not given.
const DEFAULT_BUNDLE: &str = "models/mnist-core";

impl HeadArgs {
    fn options(&self, must_exist: bool) -> Result<HeadOptions> {
        Ok(HeadOptions {
            features: self.features.clone(),
            lambda: self.lambda,
            must_exist,
            key: self.key_file.as_deref().map(read_key).transpose()?,
            ..Default::default()
        })
    }

    /// Opens the head of an existing state dir: a missing or non-Lethe dir is refused, and
    /// nothing is created.
    fn open(&self, g: &Global) -> Result<Head> {
        let bundle = bundle_for(&self.state, self.bundle.as_deref(), None)?;
        let core = Arc::new(Core::from_bundle(bundle, &g.core_options())?);
        Head::open(core, &self.state, &self.options(true)?)
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Demo(args) => crate::demo::run(g, &args),
        Command::Bench(args) => crate::bench::run(g, &args).map(drop),
        Command::Eval(args) => crate::eval::run(g, &args).map(drop),
        Command::Features(args) => features(g, &args),
        Command::Bundle(BundleCommand::Check(args)) => bundle_check(g, &args.dir),
        Command::Learn(args) => learn(g, &args),
        Command::Forget(args) => forget(g, &args),
        Command::ForgetAll(args) => forget_all(g, &args),
        Command::Predict(args) => predict(g, &args),
        Command::Weights(args) => weights(g, &args),
        Command::Info(head) => info(g, &head),
        Command::Verify(head) => verify(g, &head),
        Command::Rekey(args) => rekey(g, &args),
        Command::Erase(args) => erase(&args.state),
        Command::Receipt(ReceiptCommand::Verify(args)) => receipts::verify(g, &args),
    }
}

fn features(g: &Global, args: &FeaturesArgs) -> Result<()> {
    let core = Core::open(&args.bundle, &g.core_options())?;
    let logits = core
        .bundle()
        .manifest
        .core_logits
        .as_ref()
        .map(|cl| &cl.output);
    let name = match &args.features {
        Some(name) if Some(name) == logits => name.clone(),
        other => core.bundle().features(other.as_deref())?.output.clone(),
    };
    let samples = Samples::read(core.bundle(), &args.input)?;
    let n = samples.count();
    let start = Instant::now();
    let phi = core_output(&core, &samples, &name)?;
    data::write(&args.out, &phi)?;
    eprintln!(
        "wrote {} features [{n}, {}] to {} ({:.2} s)",
        name,
        phi.shape()[1],
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bundle_check(g: &Global, dir: &Path) -> Result<()> {
    let bundle = Bundle::open(dir)?;
    let core = Core::from_bundle(bundle, &g.core_options())?;
    let m = &core.bundle().manifest;
    println!("bundle {} ok: {}", m.name, m.description);
    println!("  core      {} (sha256 {})", m.core.file, m.core.sha256);
    for input in &m.inputs {
        println!(
            "  input     {} {} {}",
            input.name,
            input.dtype,
            input.shape_text()
        );
    }
    if let Some(text) = m.preprocessing.text() {
        println!(
            "  text      {} (sha256 {}), at most {} tokens, padded to {}",
            text.tokenizer,
            text.tokenizer_sha256,
            text.max_length,
            match text.padding {
                Padding::Longest => "the longest text of a batch",
                Padding::MaxLength => "max_length",
            }
        );
    }
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

fn learn(g: &Global, args: &LearnArgs) -> Result<()> {
    // Every input is read and checked before the state dir is touched.
    let labels: Vec<u32> = read_labels(&args.labels)?;
    let ids = data::read_ids(&args.ids)?;
    let head = &args.head;
    let is_new = recorded_bundle(&head.state)?.is_none();
    let bundle = bundle_for(
        &head.state,
        head.bundle.as_deref(),
        Some(Path::new(DEFAULT_BUNDLE)),
    )?;
    let classes = bundle.manifest.classes.len();
    if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::InvalidInput(format!(
            "label {l} is out of range: the bundle has {classes} classes"
        )));
    }
    let samples = Samples::read(&bundle, &args.input)?;
    let n = samples.count();
    check_counts(n, labels.len(), ids.len())?;
    let core = Arc::new(Core::from_bundle(bundle, &g.core_options())?);

    let start = Instant::now();
    let creation = is_new.then(|| Creation::before(&head.state));
    let samples = learn_into(core, args, &samples, &ids, &labels, creation)?;
    eprintln!(
        "learned {n} samples ({samples} in the head) in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Opens (or creates) the state dir and learns in one call (all-or-nothing), after running the
/// core in chunks with progress; returns the samples in the head. Only a successful learn
/// leaves a state dir behind: when the learn fails on a dir that was new (`creation`) and
/// still holds no sample, the dir is erased while the head still holds its lock, so that
/// nothing another process made there is touched, and what was at its path put back. If the
/// open itself fails, nothing is undone: the dir is then another's (it holds the lock), or an
/// interrupted creation, which holds no sample.
fn learn_into(
    core: Arc<Core>,
    args: &LearnArgs,
    samples: &Samples,
    ids: &[u64],
    labels: &[u32],
    creation: Option<Creation>,
) -> Result<u64> {
    let h = Head::open(core, &args.head.state, &args.head.options(false)?)?;
    let learned = core_features(&h, samples)
        .and_then(|(phi, z)| h.learn_features(ids, &phi, &z, labels))
        .and_then(|()| match &args.receipt {
            Some(path) => receipts::write(path, &h, "learn", ids.len()),
            None => Ok(()),
        });
    if let Err(e) = learned {
        let undone = match creation.filter(|_| h.info().samples == 0) {
            Some(creation) => h.erase().and_then(|_| creation.put_back()),
            None => h.close(),
        };
        if let Err(u) = undone {
            eprintln!("warning: after the failed learn, {u}");
        }
        return Err(e);
    }
    let samples = h.info().samples;
    close_or_warn(h);
    Ok(samples)
}

/// Closes a head once the command's work is done: closing compacts the state dir, and when
/// that fails (a full disk, say) what the command changed stays saved in the journal, which
/// the next open recovers and compacts. So it is a warning, not the command's failure: an
/// error from a learn or forget must mean that nothing changed.
fn close_or_warn(h: Head) {
    if let Err(e) = h.close() {
        eprintln!(
            "warning: closing the state dir failed ({e}); what the command did is saved, and \
             the next command that opens the state dir compacts it"
        );
    }
}

fn forget(g: &Global, args: &ForgetArgs) -> Result<()> {
    let ids = match &args.ids_file {
        Some(path) => read_id_file(path)?,
        None => args.ids.clone(),
    };
    let h = args.head.open(g)?;
    let start = Instant::now();
    h.forget(&ids)?;
    let took = start.elapsed();
    if let Some(path) = &args.receipt {
        receipts::write(path, &h, "forget", ids.len())?;
    }
    let samples = h.info().samples;
    close_or_warn(h);
    eprintln!(
        "forgot {} samples ({samples} left) in {:.3} ms",
        ids.len(),
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

fn forget_all(g: &Global, args: &ForgetAllArgs) -> Result<()> {
    let h = args.head.open(g)?;
    h.forget_all()?;
    if let Some(path) = &args.receipt {
        receipts::write(path, &h, "forget-all", 0)?;
    }
    close_or_warn(h);
    eprintln!("forgot all samples: the head now predicts the core's logits");
    Ok(())
}

fn rekey(g: &Global, args: &RekeyArgs) -> Result<()> {
    let new_key = read_key(&args.new_key_file)?;
    let h = args.head.open(g)?;
    let start = Instant::now();
    h.rekey(&new_key)?;
    close_or_warn(h);
    eprintln!(
        "resealed {} under the new key in {:.2} s: open it with {} from now on",
        args.head.state.display(),
        start.elapsed().as_secs_f64(),
        args.new_key_file.display()
    );
    Ok(())
}

fn predict(g: &Global, args: &PredictArgs) -> Result<()> {
    let h = args.head.open(g)?;
    let bundle = h.core().expect("opened over a core").bundle();
    let samples = Samples::read(bundle, &args.input)?;
    let n = samples.count();
    let (phi, z) = core_features(&h, &samples)?;
    let logits = h.predict_features(&phi, &z)?;
    match &args.out {
        Some(path) => {
            data::write(path, &logits.clone().into_dyn())?;
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
    close_or_warn(h);
    Ok(())
}

fn weights(g: &Global, args: &WeightsArgs) -> Result<()> {
    let h = args.head.open(g)?;
    let w = h.weights()?;
    let out = &args.out;
    let f = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
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
    close_or_warn(h);
    Ok(())
}

fn info(g: &Global, head: &HeadArgs) -> Result<()> {
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
    close_or_warn(h);
    Ok(())
}

fn verify(g: &Global, head: &HeadArgs) -> Result<()> {
    let h = head.open(g)?;
    let start = Instant::now();
    let report = h.verify()?;
    let word = |same: bool, yes: &'static str| if same { yes } else { "DIFFER" };
    println!(
        "{} samples: statistics {}, canonical weights {}, served weights {} ({:.2} s)",
        report.samples,
        word(report.stats_equal, "equal"),
        word(report.weights_identical, "bit-identical"),
        word(report.served_identical, "bit-identical"),
        start.elapsed().as_secs_f64()
    );
    close_or_warn(h);
    if report.ok() {
        Ok(())
    } else {
        Err(Error::state(
            &head.state,
            "verification failed: what is served differs from a recomputation",
        ))
    }
}

/// Which state dir to erase.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The state dir to erase (it need not open; a missing path is not an error).
    #[arg(long)]
    pub state: PathBuf,
}

fn erase(dir: &Path) -> Result<()> {
    let report = lethe::store::erase(dir)?;
    for name in &report.scrubbed {
        eprintln!("scrubbed and removed {name}");
    }
    for name in &report.unlinked {
        eprintln!("removed without writing through it: {name}");
    }
    for name in &report.kept {
        eprintln!("kept (not Lethe's): {name}");
    }
    eprintln!(
        "erased {}{}",
        dir.display(),
        if report.dir_removed {
            " (the dir is removed)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Ids from an integer .npy file, or a text file of ids separated by white space or commas.
fn read_id_file(path: &Path) -> Result<Vec<u64>> {
    if path.extension().is_some_and(|e| e == "npy") {
        return data::read_ids(path);
    }
    // Read as it is parsed: the first byte that cannot be part of an id (or an id longer than
    // u64's 20 digits) ends it, so a device or a binary file is refused at once.
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let not_an_id =
        |t: &str| Error::InvalidInput(format!("{}: {t:?} is not an id", path.display()));
    let mut ids = Vec::new();
    let mut token = String::new();
    for byte in std::io::BufReader::new(file).bytes() {
        let b = byte.map_err(|e| Error::io(path, e))?;
        if b.is_ascii_whitespace() || b == b',' {
            if !token.is_empty() {
                ids.push(token.parse().map_err(|_| not_an_id(&token))?);
                token.clear();
            }
            continue;
        }
        token.push(char::from(b));
        if !b.is_ascii_digit() || token.len() > 20 {
            return Err(not_an_id(&token));
        }
    }
    if !token.is_empty() {
        ids.push(token.parse().map_err(|_| not_an_id(&token))?);
    }
    Ok(ids)
}
