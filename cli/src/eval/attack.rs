//! A loss-threshold membership-inference attack.

use super::results::Attack;

/// The attack's AUC and best balanced accuracy from member and non-member losses.
pub fn attack(members: &[f64], non_members: &[f64]) -> Attack {
    // Sort all losses; a threshold τ flags "member" when loss ≤ τ.
    let mut all: Vec<(f64, bool)> = members
        .iter()
        .map(|&l| (l, true))
        .chain(non_members.iter().map(|&l| (l, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (m, n) = (members.len() as f64, non_members.len() as f64);
    let (mut below_non, mut auc, mut best) = (0.0, 0.0, 0.5);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        // A group of equal losses: ties count half.
        let j = (i..all.len())
            .find(|&j| all[j].0 != all[i].0)
            .unwrap_or(all.len());
        let group_m = all[i..j].iter().filter(|e| e.1).count() as f64;
        let group_n = (j - i) as f64 - group_m;
        // Members with a loss below non-members count toward the AUC.
        auc += group_m * ((n - below_non - group_n) + 0.5 * group_n);
        below_non += group_n;
        tp += group_m;
        fp += group_n;
        best = f64::max(best, 0.5 * (tp / m + (1.0 - fp / n)));
        i = j;
    }
    Attack {
        auc: auc / (m * n),
        best_accuracy: 100.0 * best,
    }
}
