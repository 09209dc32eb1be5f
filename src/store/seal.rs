//! Sealing (DESIGN.md G9): how the state dir's files hold what derives from user data.
//!
//! A state dir without a key seals with an xxh3-64 checksum (detects damage, not tampering).
//! A state dir with a key seals with XChaCha20-Poly1305 under its **data key**, a random
//! 32-byte key of the dir's own, stored only wrapped (sealed) by the application's
//! [`StateKey`] in the journal's header. Every sealed piece has a fresh random 192-bit nonce
//! and associated data that names its place (the file's random salt, the piece's position in
//! it, and for a record the sample's id and label), so a piece moved to another place, file or
//! state dir, or an older copy put back, fails to authenticate.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use xxhash_rust::xxh3::Xxh3;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Bytes of a [`StateKey`] and of a data key.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// What sealing adds to a piece with a key: the nonce before it, the tag after it.
pub const AEAD_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// What sealing adds without a key: the checksum after it.
pub const CHECKSUM_LEN: usize = 8;
/// Bytes of a wrapped data key.
pub const WRAPPED_LEN: usize = AEAD_OVERHEAD + KEY_LEN;

/// An application's key for an encrypted state dir: 32 bytes, typically from the platform's
/// key store. Zeroized when dropped; `Debug` does not show it.
///
/// ```
/// let key = lethe::StateKey::new([7u8; 32]);
/// assert_eq!(format!("{key:?}"), "StateKey(..)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StateKey(Zeroizing<[u8; KEY_LEN]>);

impl StateKey {
    pub fn new(bytes: [u8; KEY_LEN]) -> StateKey {
        StateKey(Zeroizing::new(bytes))
    }

    /// A key from exactly 32 bytes.
    /// Bytes of a key.
    pub const LEN: usize = KEY_LEN;

    pub fn from_slice(bytes: &[u8]) -> Result<StateKey> {
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::Key(format!(
                "a key is {KEY_LEN} bytes; this one has {}",
                bytes.len()
            ))
        })?;
        Ok(StateKey::new(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// Fills `out` with random bytes from the operating system.
pub fn random(out: &mut [u8]) {
    OsRng.fill_bytes(out);
}

pub fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    random(&mut b);
    u128::from_le_bytes(b)
}

/// Associated data: the place a piece is sealed for.
pub struct Ad(Vec<u8>);

impl Ad {
    pub fn new(kind: &[u8; 4]) -> Ad {
        Ad(kind.to_vec())
    }

    pub fn u32(mut self, v: u32) -> Ad {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(mut self, v: u64) -> Ad {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u128(mut self, v: u128) -> Ad {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(mut self, b: &[u8]) -> Ad {
        self.0.extend_from_slice(b);
        self
    }
}

/// Seals and opens the pieces of one state dir: with its data key, or with checksums.
pub enum Sealer {
    Checksum,
    Key(Box<XChaCha20Poly1305>),
}

/// Why a piece did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// Every byte is zero: a piece that was overwritten (or never written).
    Zero,
    /// Damaged, tampered with, moved, or sealed under another key.
    Bad,
}

impl Sealer {
    /// A new random data key.
    pub fn fresh() -> (Sealer, Zeroizing<[u8; KEY_LEN]>) {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random(&mut key[..]);
        (Sealer::with(&key), key)
    }

    fn with(key: &[u8; KEY_LEN]) -> Sealer {
        sealer_of(key)
    }

    pub fn encrypted(&self) -> bool {
        matches!(self, Sealer::Key(_))
    }

    /// Bytes a piece of `len` bytes takes sealed.
    pub fn sealed_len(&self, len: usize) -> usize {
        len + match self {
            Sealer::Checksum => CHECKSUM_LEN,
            Sealer::Key(_) => AEAD_OVERHEAD,
        }
    }

    /// The plaintext length of a sealed piece of `len` bytes (`None`: too short).
    pub fn plain_len(&self, len: usize) -> Option<usize> {
        len.checked_sub(self.sealed_len(0))
    }

    /// Seals `plain` for the place `ad` into `out` ([`Sealer::sealed_len`] bytes).
    pub fn seal_into(&self, ad: &Ad, plain: &[u8], out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.sealed_len(plain.len()));
        out[self.body_of(plain.len())].copy_from_slice(plain);
        self.seal_in_place(ad, out);
    }

    /// Where a piece of `len` bytes lies in its sealed form (see [`Sealer::seal_in_place`]).
    pub fn body_of(&self, len: usize) -> std::ops::Range<usize> {
        match self {
            Sealer::Checksum => 0..len,
            Sealer::Key(_) => NONCE_LEN..NONCE_LEN + len,
        }
    }

    /// Seals a piece written in place: `out` is its sealed length, with the piece at
    /// [`Sealer::body_of`] (so that a large piece needs no second buffer).
    pub fn seal_in_place(&self, ad: &Ad, out: &mut [u8]) {
        let len = self
            .plain_len(out.len())
            .expect("out is a sealed piece's length");
        match self {
            Sealer::Checksum => {
                let (body, sum) = out.split_at_mut(len);
                sum.copy_from_slice(&checksum(ad, body).to_le_bytes());
            }
            Sealer::Key(cipher) => {
                let (nonce, rest) = out.split_at_mut(NONCE_LEN);
                random(nonce);
                let (body, tag) = rest.split_at_mut(len);
                let t = cipher
                    .encrypt_in_place_detached(XNonce::from_slice(nonce), &ad.0, body)
                    .expect("a piece within XChaCha20-Poly1305's limits");
                tag.copy_from_slice(&t);
            }
        }
    }

    pub fn seal(&self, ad: &Ad, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.sealed_len(plain.len())];
        self.seal_into(ad, plain, &mut out);
        out
    }

    /// Checks (and, with a key, decrypts) a sealed piece's `body` in place: `prefix` is what
    /// precedes it (the nonce, or nothing), `suffix` what follows (the tag or the checksum).
    fn unseal(&self, ad: &Ad, prefix: &[u8], body: &mut [u8], suffix: &[u8]) -> bool {
        match self {
            Sealer::Checksum => {
                u64::from_le_bytes(suffix.try_into().expect("8 bytes")) == checksum(ad, body)
            }
            Sealer::Key(cipher) => cipher
                .decrypt_in_place_detached(
                    XNonce::from_slice(prefix),
                    &ad.0,
                    body,
                    Tag::from_slice(suffix),
                )
                .is_ok(),
        }
    }

    /// Where a sealed piece's body starts: after the nonce, with a key.
    fn body_at(&self) -> usize {
        match self {
            Sealer::Checksum => 0,
            Sealer::Key(_) => NONCE_LEN,
        }
    }

    /// Opens a sealed piece into `out` ([`Sealer::plain_len`] bytes). On failure `out` is
    /// zeroed.
    pub fn open_into(
        &self,
        ad: &Ad,
        sealed: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<(), Unsealed> {
        let (prefix, rest) = sealed.split_at(self.body_at());
        let (body, suffix) = rest.split_at(out.len());
        out.copy_from_slice(body);
        if self.unseal(ad, prefix, out, suffix) {
            return Ok(());
        }
        out.zeroize();
        Err(failure(sealed))
    }

    /// Opens a sealed piece where it lies: returns the plaintext, a part of `sealed` (which
    /// is left as it was when the piece does not open).
    pub fn open_in_place<'a>(
        &self,
        ad: &Ad,
        sealed: &'a mut [u8],
    ) -> std::result::Result<&'a [u8], Unsealed> {
        let len = self.plain_len(sealed.len()).ok_or(Unsealed::Bad)?;
        let start = self.body_at();
        let (prefix, rest) = sealed.split_at_mut(start);
        let (body, suffix) = rest.split_at_mut(len);
        if self.unseal(ad, prefix, body, suffix) {
            return Ok(&sealed[start..start + len]);
        }
        Err(failure(sealed))
    }

    /// Opens a whole sealed piece (the plaintext is zeroized when dropped).
    pub fn open(
        &self,
        ad: &Ad,
        sealed: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, Unsealed> {
        let len = self.plain_len(sealed.len()).ok_or(Unsealed::Bad)?;
        let mut out = Zeroizing::new(vec![0u8; len]);
        self.open_into(ad, sealed, &mut out)?;
        Ok(out)
    }
}

/// Why a sealed piece did not open: it is all zeros (overwritten), or anything else.
fn failure(sealed: &[u8]) -> Unsealed {
    if sealed.iter().all(|&b| b == 0) {
        Unsealed::Zero
    } else {
        Unsealed::Bad
    }
}

/// The sealer of a data key.
pub fn sealer_of(data_key: &[u8; KEY_LEN]) -> Sealer {
    Sealer::Key(Box::new(XChaCha20Poly1305::new(data_key.into())))
}

fn checksum(ad: &Ad, body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&ad.0);
    h.update(body);
    h.digest()
}

/// The data key wrapped by the application's key ([`WRAPPED_LEN`] bytes), for the place `ad`.
pub fn wrap(key: &StateKey, ad: &Ad, data_key: &[u8; KEY_LEN]) -> Vec<u8> {
    Sealer::Key(Box::new(key.cipher())).seal(ad, data_key)
}

/// Unwraps a data key: the sealer of the state dir, or an error that says the key is wrong.
pub fn unwrap(
    key: &StateKey,
    ad: &Ad,
    wrapped: &[u8],
) -> Result<(Sealer, Zeroizing<[u8; KEY_LEN]>)> {
    let opened = Sealer::Key(Box::new(key.cipher()))
        .open(ad, wrapped)
        .map_err(|_| {
            Error::Key(
                "the key does not open this state dir's data key: it is not the key the state \
                 dir was encrypted with (or the key's record was damaged)"
                    .into(),
            )
        })?;
    let mut data_key = Zeroizing::new([0u8; KEY_LEN]);
    data_key.copy_from_slice(&opened);
    Ok((Sealer::with(&data_key), data_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_opens_only_in_its_place_and_under_its_key() {
        let plain = b"sample bytes";
        for sealer in [Sealer::Checksum, Sealer::fresh().0] {
            let ad = Ad::new(b"TEST").u64(3);
            let sealed = sealer.seal(&ad, plain);
            assert_eq!(&sealer.open(&ad, &sealed).unwrap()[..], plain);
            let elsewhere = Ad::new(b"TEST").u64(4);
            assert_eq!(sealer.open(&elsewhere, &sealed).err(), Some(Unsealed::Bad));
            let mut flipped = sealed.clone();
            flipped[5] ^= 4;
            assert_eq!(sealer.open(&ad, &flipped).err(), Some(Unsealed::Bad));
            let zero = vec![0u8; sealed.len()];
            assert_eq!(sealer.open(&ad, &zero).err(), Some(Unsealed::Zero));
            assert_eq!(
                sealer.encrypted(),
                !sealed.windows(plain.len()).any(|w| w == plain)
            );
        }
        let (a, b) = (Sealer::fresh().0, Sealer::fresh().0);
        let ad = Ad::new(b"TEST");
        assert_eq!(b.open(&ad, &a.seal(&ad, plain)).err(), Some(Unsealed::Bad));
        assert_ne!(a.seal(&ad, plain), a.seal(&ad, plain), "nonces are fresh");
    }

    #[test]
    fn a_data_key_unwraps_only_with_its_key() {
        let (key, other) = (StateKey::new([1; 32]), StateKey::new([2; 32]));
        let (_, data_key) = Sealer::fresh();
        let ad = Ad::new(b"WRAP");
        let wrapped = wrap(&key, &ad, &data_key);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        assert_eq!(*unwrap(&key, &ad, &wrapped).unwrap().1, *data_key);
        assert!(matches!(unwrap(&other, &ad, &wrapped), Err(Error::Key(_))));
        assert!(StateKey::from_slice(&[0; 31]).is_err());
    }
}
