//! G8: a head's receipt is the same for every head that holds the same samples, however it got
//! there: learning in another order, forgetting, forget-all, a state dir closed and reopened.
//! It changes when one retained sample is changed, added or missing. The digest's byte layout is
//! checked against a hand-written one in `src/math/receipt.rs`.

mod common;

use common::store::{learn, sample, spec, C, D};
use lethe::{Head, HeadOptions, Receipt};
use ndarray::Array2;

/// The receipt of a fresh detached head that learned only `ids`.
fn fresh(ids: &[u64]) -> Receipt {
    let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
    if !ids.is_empty() {
        learn(&head, ids).unwrap();
    }
    head.receipt().unwrap()
}

#[test]
fn a_forget_has_the_receipt_of_a_fresh_head_on_the_rest() {
    let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
    learn(&head, &(0..40).collect::<Vec<_>>()).unwrap();
    learn(&head, &(100..130).collect::<Vec<_>>()).unwrap();
    let forgotten = [3, 17, 101, 129];
    head.forget(&forgotten).unwrap();
    let receipt = head.receipt().unwrap();
    assert_eq!(receipt.samples, 66);

    let mut rest: Vec<u64> = (0..40)
        .chain(100..130)
        .filter(|id| !forgotten.contains(id))
        .collect();
    rest.reverse();
    assert_eq!(fresh(&rest), receipt);

    // One retained sample missing, one forgotten sample kept, one sample with other features.
    assert_ne!(fresh(&rest[1..]).digest, receipt.digest);
    let mut more = rest.clone();
    more.push(3);
    assert_ne!(fresh(&more).digest, receipt.digest);
    let changed = Head::detached(spec(), &HeadOptions::default()).unwrap();
    learn(&changed, &rest[1..]).unwrap();
    let (mut phi, z, label) = sample(rest[0]);
    phi[D / 2] += 0.25;
    changed
        .learn_features(
            &[rest[0]],
            &Array2::from_shape_vec((1, D), phi).unwrap(),
            &Array2::from_shape_vec((1, C), z).unwrap(),
            &[label],
        )
        .unwrap();
    let receipt_changed = changed.receipt().unwrap();
    assert_ne!(receipt_changed.digest, receipt.digest);
    // The ids alone cannot tell that a sample changed; the digest can.
    assert_eq!(receipt_changed.ids_digest, receipt.ids_digest);
}

#[test]
fn forget_all_has_the_receipt_of_an_empty_head() {
    let head = Head::detached(spec(), &HeadOptions::default()).unwrap();
    learn(&head, &[1, 2, 3]).unwrap();
    head.forget_all().unwrap();
    assert_eq!(head.receipt().unwrap(), fresh(&[]));
}

#[test]
fn a_state_dir_reopens_with_the_same_receipt() {
    let tmp = common::temp_dir();
    let dir = tmp.path().join("state");
    let head = common::store::open(&dir).unwrap();
    learn(&head, &[4, 5, 6, 7]).unwrap();
    head.forget(&[5]).unwrap();
    let before = head.receipt().unwrap();
    head.close().unwrap();
    let head = common::store::open(&dir).unwrap();
    assert_eq!(head.receipt().unwrap(), before);
    assert_eq!(before, fresh(&[7, 4, 6]));
    head.close().unwrap();
}
