//! How many threads one computation of the head's math ([`super::solver`],
//! [`super::stats`], [`super::woodbury`]) shares its work among.

use std::sync::OnceLock;

/// The most threads one computation uses.
const MAX_THREADS: usize = 8;

/// Every core, up to [`MAX_THREADS`], when the work is `worth` it (large enough to repay
/// starting threads); else one.
pub fn cores_if(worth: bool) -> usize {
    if worth {
        cores()
    } else {
        1
    }
}

/// The cores this process may use, up to [`MAX_THREADS`], asked once: the standard library
/// reads the cgroup's CPU quota from files on every call, which a one-sample forget (whose
/// cost model asks) would pay each time.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |t| t.get().min(MAX_THREADS))
    })
}
