//! Receipts from the command line (G8): `--receipt FILE` on learn, forget and forget-all writes
//! the head's receipt after the call as JSON, and `lethe receipt verify` checks one by relearning
//! the retained samples in a fresh head that keeps nothing on disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::batches::{check_counts, core_features, read_labels, InputArgs, Samples};
use crate::global::Global;
use lethe::math::receipt::hex;
use lethe::{data, Bundle, Core, Error, Head, HeadOptions, HeadSpec, Receipt, Result};

/// A receipt file: the call it follows, the head it describes (enough to rebuild it: the
/// bundle's name and core, the spec) and the receipt itself. Nothing about forgotten samples.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReceiptFile {
    /// `learn`, `forget` or `forget-all`.
    pub operation: String,
    /// How many ids the call named (0 for forget-all).
    pub named: u64,
    pub bundle: String,
    pub core_sha256: String,
    pub spec: HeadSpec,
    #[serde(flatten)]
    pub receipt: Receipt,
}

/// Writes the receipt of `head` (which has a core) after `operation` named `named` ids. The
/// operation has happened whatever this returns, and a failure says so.
pub fn write(path: &Path, head: &Head, operation: &str, named: usize) -> Result<()> {
    write_file(path, head, operation, named).map_err(|e| {
        Error::InvalidInput(format!(
            "the {operation} is done and durable, but its receipt was not written to {}: {e}",
            path.display()
        ))
    })
}

fn write_file(path: &Path, head: &Head, operation: &str, named: usize) -> Result<()> {
    let receipt = head.receipt()?;
    let bundle = head
        .core()
        .ok_or_else(|| Error::InvalidInput("the head has no core".into()))?
        .bundle();
    let file = ReceiptFile {
        operation: operation.into(),
        named: named as u64,
        bundle: bundle.manifest.name.clone(),
        core_sha256: bundle.core_sha256().to_string(),
        spec: head.spec().clone(),
        receipt,
    };
    let text = serde_json::to_string_pretty(&file)
        .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    eprintln!("wrote the receipt to {}", path.display());
    Ok(())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle the receipt's head belongs to.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The receipt (JSON, from `--receipt`).
    #[arg(long)]
    pub receipt: PathBuf,
    /// The retained samples.
    #[command(flatten)]
    pub input: InputArgs,
    /// Their class indices, integer [n].
    #[arg(long)]
    pub labels: PathBuf,
    /// Their ids, integer [n].
    #[arg(long)]
    pub ids: PathBuf,
    /// Ids that were forgotten: each must be absent from the retained ids the receipt commits to.
    #[arg(long, value_delimiter = ',')]
    pub forgotten: Vec<u64>,
}

/// Relearns the retained samples in a fresh in-memory head and compares receipts.
pub fn verify(g: &Global, args: &VerifyArgs) -> Result<()> {
    let path = &args.receipt;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: ReceiptFile = serde_json::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("{}: not a receipt: {e}", path.display())))?;
    let bundle = Bundle::open(&args.bundle)?;
    if bundle.core_sha256() != file.core_sha256 {
        return Err(Error::InvalidInput(format!(
            "the receipt is for bundle {:?} with core sha256 {}, but {} has core sha256 {}",
            file.bundle,
            file.core_sha256,
            args.bundle.display(),
            bundle.core_sha256()
        )));
    }
    let ids = data::read_ids(&args.ids)?;
    let labels: Vec<u32> = read_labels(&args.labels)?;
    let samples = Samples::read(&bundle, &args.input)?;
    let n = samples.count();
    check_counts(n, labels.len(), ids.len())?;
    let retained: HashSet<u64> = ids.iter().copied().collect();
    if let Some(id) = args.forgotten.iter().find(|id| retained.contains(id)) {
        return Err(Error::InvalidInput(format!(
            "forgotten id {id} is among the retained ids"
        )));
    }
    let options = HeadOptions {
        features: Some(file.spec.features.clone()),
        lambda: Some(file.spec.lambda),
        target_scale: Some(file.spec.target_scale),
        ..Default::default()
    };
    let core = Arc::new(Core::from_bundle(bundle, &g.core_options())?);
    let head = Head::in_memory(core, &options)?;
    if *head.spec() != file.spec {
        return Err(Error::InvalidInput(
            "the receipt's head is not one this bundle makes (its spec differs)".into(),
        ));
    }
    if n > 0 {
        let (phi, z) = core_features(&head, &samples)?;
        head.learn_features(&ids, &phi, &z, &labels)?;
    }
    let relearned = head.receipt()?;
    let expected = &file.receipt;
    if relearned.receipt_version != expected.receipt_version
        || relearned.algorithm_version != expected.algorithm_version
    {
        return Err(Error::InvalidInput(format!(
            "the receipt has receipt version {} and algorithm version {}; this Lethe makes {} \
             and {}",
            expected.receipt_version,
            expected.algorithm_version,
            relearned.receipt_version,
            relearned.algorithm_version
        )));
    }
    if relearned.ids_digest != expected.ids_digest {
        return Err(Error::InvalidInput(format!(
            "not verified: the {n} retained ids are not the {} ids the receipt commits to",
            expected.samples
        )));
    }
    if relearned.digest != expected.digest {
        return Err(Error::InvalidInput(
            "not verified: the retained ids match, but a head that learns these samples has \
             other weights (a sample's inputs or label differ)"
                .into(),
        ));
    }
    println!(
        "verified: a fresh head that learned the {n} retained samples has digest {}{}",
        hex(&relearned.digest),
        if args.forgotten.is_empty() {
            String::new()
        } else {
            format!("; the {} forgotten ids are absent", args.forgotten.len())
        }
    );
    Ok(())
}
