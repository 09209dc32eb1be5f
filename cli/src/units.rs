//! How reports show times, counts and ratios.

/// Seconds as µs, ms, s or min, three significant digits.
pub fn fmt_secs(s: f64) -> String {
    let sig = |v: f64, unit: &str| {
        if v >= 100.0 {
            format!("{v:.0} {unit}")
        } else if v >= 10.0 {
            format!("{v:.1} {unit}")
        } else {
            format!("{v:.2} {unit}")
        }
    };
    if s < 1e-3 {
        sig(s * 1e6, "µs")
    } else if s < 1.0 {
        sig(s * 1e3, "ms")
    } else if s < 120.0 {
        sig(s, "s")
    } else if s < 7200.0 {
        sig(s / 60.0, "min")
    } else {
        sig(s / 3600.0, "h")
    }
}

/// A difference of seconds with its sign: +1.23 ms, −45.6 µs.
pub fn fmt_signed_secs(s: f64) -> String {
    let sign = if s < 0.0 { "−" } else { "+" };
    format!("{sign}{}", fmt_secs(s.abs()))
}

/// A ratio like 1234× or 1.02×.
pub fn fmt_ratio(r: f64) -> String {
    if r >= 1e5 {
        let e = r.log10().floor();
        format!("{:.1}·10^{}×", r / 10f64.powf(e), e as i32)
    } else if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.3}×")
    }
}

/// A count like 50k (multiples of a thousand) or 1234.
pub fn fmt_n(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}
