//! How many threads one computation of the head's math ([`super::solver`],
//! [`super::stats`], [`super::woodbury`]) shares its work among.

/// The most threads one computation uses.
const MAX_THREADS: usize = 8;

/// Every core, up to [`MAX_THREADS`], when the work is `worth` it (large enough to repay
/// starting threads); else one.
pub fn cores_if(worth: bool) -> usize {
    if worth {
        std::thread::available_parallelism().map_or(1, |t| t.get().min(MAX_THREADS))
    } else {
        1
    }
}
