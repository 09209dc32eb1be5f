//! The shapes the drivers and the kernels share.

/// Lanes of every dot product: the unit of the fixed order.
pub const LANES: usize = 8;

/// The running sums of one dot product's lanes.
pub type Lanes = [f64; LANES];

/// Rows of x per bulk call.
pub const TILE_ROWS: usize = 4;

/// The lanes of one bulk call: `[r][s]` for x row r and y row s.
pub type Tile = [[Lanes; LANES]; TILE_ROWS];
