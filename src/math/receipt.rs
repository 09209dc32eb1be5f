//! Receipts (G8): a SHA-256 digest of a head's canonical state that anyone holding the retained
//! samples can recompute.
//!
//! The digest covers the spec, the algorithm version, the canonical weights Θ and a commitment
//! to the remaining ids, and nothing else: by G2 and G7 it is the same for every head that holds
//! the same samples, whatever it learned and forgot before and on whatever machine, so a fresh
//! head that learns only the retained samples reproduces it. Byte layouts (all integers little
//! endian, strings as a u64 byte length then UTF-8):
//!
//! - ids digest = SHA-256(`"lethe ids\0"`, u32 [`RECEIPT_VERSION`], u64 count, each id as u64 in
//!   increasing order);
//! - digest = SHA-256(`"lethe receipt\0"`, u32 [`RECEIPT_VERSION`], u32 algorithm version, the
//!   spec, u64 p, u64 C, Θ's p × C entries as f64 bits row by row (row i < d is column i of W, row
//!   d is b), u64 remaining samples, the 32-byte ids digest), where the spec is: features, u64 d,
//!   u64 C and each class, u8 0 (no core logits) or 1 then the logits' name, a u64 count and each
//!   column's class as u64, then λ, the target scale as f64 bits, u32 fraction bits, the feature
//!   and target bounds as f64 bits.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::spec::HeadSpec;

/// The version of the byte layouts above; a change to them changes it.
pub const RECEIPT_VERSION: u32 = 1;

/// What a head's state commits to (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_version: u32,
    /// The canonical solve's version ([`super::solver::ALGORITHM_VERSION`]).
    pub algorithm_version: u32,
    /// How many samples the head holds.
    pub samples: u64,
    /// The commitment to the remaining ids: whoever has their list can check that a forgotten
    /// id is absent.
    #[serde(with = "hex32")]
    pub ids_digest: [u8; 32],
    #[serde(with = "hex32")]
    pub digest: [u8; 32],
}

impl Receipt {
    /// The receipt of a head with `spec`, canonical weights `theta` (p × C, row-major by row as
    /// `theta(i, c)`) and the remaining ids `sorted_ids` (increasing).
    pub fn of(
        spec: &HeadSpec,
        algorithm_version: u32,
        theta: impl Fn(usize, usize) -> f64,
        sorted_ids: &[u64],
    ) -> Receipt {
        let ids_digest = ids_digest(sorted_ids);
        let mut h = Sha256::new();
        h.update(b"lethe receipt\0");
        h.update(RECEIPT_VERSION.to_le_bytes());
        h.update(algorithm_version.to_le_bytes());
        spec_bytes(&mut h, spec);
        let (p, c) = (spec.dim + 1, spec.num_classes());
        h.update((p as u64).to_le_bytes());
        h.update((c as u64).to_le_bytes());
        for i in 0..p {
            for j in 0..c {
                h.update(theta(i, j).to_bits().to_le_bytes());
            }
        }
        h.update((sorted_ids.len() as u64).to_le_bytes());
        h.update(ids_digest);
        Receipt {
            receipt_version: RECEIPT_VERSION,
            algorithm_version,
            samples: sorted_ids.len() as u64,
            ids_digest,
            digest: h.finalize().into(),
        }
    }
}

/// The commitment to a set of ids, given in increasing order.
pub fn ids_digest(sorted_ids: &[u64]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"lethe ids\0");
    h.update(RECEIPT_VERSION.to_le_bytes());
    h.update((sorted_ids.len() as u64).to_le_bytes());
    for id in sorted_ids {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

fn str_bytes(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn spec_bytes(h: &mut Sha256, spec: &HeadSpec) {
    str_bytes(h, &spec.features);
    h.update((spec.dim as u64).to_le_bytes());
    h.update((spec.classes.len() as u64).to_le_bytes());
    for class in &spec.classes {
        str_bytes(h, class);
    }
    match &spec.core_logits {
        None => h.update([0u8]),
        Some((name, columns)) => {
            h.update([1u8]);
            str_bytes(h, name);
            h.update((columns.len() as u64).to_le_bytes());
            for &c in columns {
                h.update((c as u64).to_le_bytes());
            }
        }
    }
    h.update(spec.lambda.to_bits().to_le_bytes());
    h.update(spec.target_scale.to_bits().to_le_bytes());
    h.update(spec.fixed.frac_bits.to_le_bytes());
    h.update(spec.fixed.feature_max_abs.to_bits().to_le_bytes());
    h.update(spec.fixed.target_max_abs.to_bits().to_le_bytes());
}

/// A 32-byte digest as 64 lowercase hex digits.
pub fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.as_bytes();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(D::Error::custom("a digest is 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(D::Error::custom)?;
            *o = u8::from_str_radix(pair, 16).map_err(D::Error::custom)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::fixed::FixedPoint;

    fn spec() -> HeadSpec {
        let fixed = FixedPoint {
            frac_bits: 16,
            feature_max_abs: 8.0,
            target_max_abs: 8.0,
        };
        HeadSpec::detached(2, 2, 1.0, fixed).unwrap()
    }

    /// The layout written out by hand for a tiny head: the documentation is the format.
    #[test]
    fn the_digest_follows_the_documented_layout() {
        let theta = [[0.5, -1.0], [2.0, 0.25], [0.0, 3.0]];
        let ids = [3u64, 9];
        let receipt = Receipt::of(&spec(), 1, |i, j| theta[i][j], &ids);

        let mut ids_bytes = b"lethe ids\0".to_vec();
        ids_bytes.extend(1u32.to_le_bytes());
        ids_bytes.extend(2u64.to_le_bytes());
        ids_bytes.extend(3u64.to_le_bytes());
        ids_bytes.extend(9u64.to_le_bytes());
        let ids_digest: [u8; 32] = Sha256::digest(&ids_bytes).into();
        assert_eq!(receipt.ids_digest, ids_digest);

        let mut b = b"lethe receipt\0".to_vec();
        b.extend(1u32.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(8u64.to_le_bytes());
        b.extend(b"features");
        b.extend(2u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        for class in ["0", "1"] {
            b.extend(1u64.to_le_bytes());
            b.extend(class.as_bytes());
        }
        b.push(0);
        b.extend(1f64.to_bits().to_le_bytes());
        b.extend(1f64.to_bits().to_le_bytes());
        b.extend(16u32.to_le_bytes());
        b.extend(8f64.to_bits().to_le_bytes());
        b.extend(8f64.to_bits().to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        for row in theta {
            for v in row {
                b.extend(f64::to_bits(v).to_le_bytes());
            }
        }
        b.extend(2u64.to_le_bytes());
        b.extend(ids_digest);
        let digest: [u8; 32] = Sha256::digest(&b).into();
        assert_eq!(receipt.digest, digest);
        assert_eq!(receipt.samples, 2);
    }

    #[test]
    fn every_part_changes_the_digest() {
        let theta = |i: usize, j: usize| (i * 2 + j) as f64;
        let base = Receipt::of(&spec(), 1, theta, &[1, 2]);
        let mut other = spec();
        other.lambda = 2.0;
        assert_ne!(Receipt::of(&other, 1, theta, &[1, 2]).digest, base.digest);
        assert_ne!(Receipt::of(&spec(), 2, theta, &[1, 2]).digest, base.digest);
        let nudged = |i: usize, j: usize| {
            let v = theta(i, j);
            if (i, j) == (2, 1) {
                f64::from_bits(v.to_bits() + 1)
            } else {
                v
            }
        };
        assert_ne!(Receipt::of(&spec(), 1, nudged, &[1, 2]).digest, base.digest);
        assert_ne!(Receipt::of(&spec(), 1, theta, &[1, 3]).digest, base.digest);
    }

    #[test]
    fn receipts_round_trip_through_json() {
        let receipt = Receipt::of(&spec(), 1, |i, j| (i + j) as f64, &[5]);
        let text = serde_json::to_string(&receipt).unwrap();
        assert!(text.contains(&hex(&receipt.digest)), "{text}");
        assert_eq!(serde_json::from_str::<Receipt>(&text).unwrap(), receipt);
        let bad = text.replace(&hex(&receipt.digest), "00");
        assert!(serde_json::from_str::<Receipt>(&bad).is_err());
    }
}
