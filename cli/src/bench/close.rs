//! Close: what closing a head costs after one forget (a compaction rewrites only the bucket
//! files that changed and `stats.bin`), and `lethe forget` on a closed state dir, next to
//! rewriting every file of the state dir (what a close cost when one samples file held them
//! all).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use super::forget::ForgetSweep;
use super::plan::Plan;
use super::results::CloseRow;
use crate::global::Global;
use crate::harness::{median, seconds_of};
use crate::units::fmt_secs;
use lethe::{Core, Error, Head, HeadOptions, Result};

/// Measures on the sweep's closed state dir (`n` samples, the sweep's bundle at `bundle`):
/// `Head::close` after forgetting one sample, what `lethe forget --ids ID` does (opening the
/// core and the head, the forget, the close; in this process), and rewriting every file of the
/// state dir (read, write a copy, sync it). Each forgotten sample is learned back afterwards.
pub fn bench_close(
    g: &Global,
    sweep: &ForgetSweep<'_>,
    bundle: &Path,
    work: &Path,
    plan: &Plan,
    n: usize,
    rng: &mut StdRng,
) -> Result<CloseRow> {
    let state = sweep.state;
    let relearn = |id: u64| -> Result<()> {
        let head = Head::open(sweep.core.clone(), state, &HeadOptions::default())?;
        sweep.learn(&head, &[id])?;
        head.close()
    };
    let (mut closes, mut cli, mut rewrites) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.open_repeats {
        let id = rng.random_range(0..n as u64);
        let head = Head::open(sweep.core.clone(), state, &HeadOptions::default())?;
        head.forget(&[id])?;
        closes.push(seconds_of(|| head.close())?);
        relearn(id)?;

        let id = rng.random_range(0..n as u64);
        cli.push(seconds_of(|| {
            let core = Arc::new(Core::open(bundle, &g.core_options())?);
            let head = Head::open(core, state, &HeadOptions::default())?;
            head.forget(&[id])?;
            head.close()
        })?);
        relearn(id)?;

        rewrites.push(seconds_of(|| rewrite_all(state, &work.join("rewritten")))?);
    }
    let row = CloseRow {
        n,
        d: sweep.d,
        c: sweep.c,
        close: median(closes),
        cli_forget: median(cli),
        rewrite: median(rewrites),
    };
    eprintln!(
        "  close after one forget {}, lethe forget {}, rewriting every file {}",
        fmt_secs(row.close),
        fmt_secs(row.cli_forget),
        fmt_secs(row.rewrite)
    );
    Ok(row)
}

/// Reads every file of `dir` and writes it to a new file in `to`, synced; then removes `to`.
fn rewrite_all(dir: &Path, to: &Path) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::io(p, e)
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let from = entry.map_err(io(dir))?.path();
        if !from.is_file() {
            continue;
        }
        let bytes = std::fs::read(&from).map_err(io(&from))?;
        let copy = to.join(from.file_name().expect("a file name"));
        let mut f = std::fs::File::create(&copy).map_err(io(&copy))?;
        f.write_all(&bytes).map_err(io(&copy))?;
        f.sync_all().map_err(io(&copy))?;
    }
    std::fs::remove_dir_all(to).map_err(io(to))
}
