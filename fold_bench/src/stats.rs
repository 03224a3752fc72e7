//! Summaries of samples: median, p99, min and max, and the table's number formats.

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Fastest.
    pub min: f64,
    /// Slowest.
    pub max: f64,
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Summary {
    /// Summarises samples given in nanoseconds.
    pub fn of_ns(ns: &[u64]) -> Summary {
        Summary::of(&ns.iter().map(|&n| n as f64 / 1000.0).collect::<Vec<_>>())
    }

    /// Summarises samples (any unit).
    pub fn of(values: &[f64]) -> Summary {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Summary {
                n: 0,
                p50: f64::NAN,
                p99: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        Summary {
            n: v.len(),
            p50: quantile(&v, 0.5),
            p99: quantile(&v, 0.99),
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// `p50 µs (p99 …, min–max …)`.
    pub fn latency(&self) -> String {
        format!(
            "p50 {} µs (p99 {}, {}–{})",
            num(self.p50),
            num(self.p99),
            num(self.min),
            num(self.max)
        )
    }

    /// `p50 (min–max)` with a unit, for small samples where p99 is the max.
    pub fn brief(&self, unit: &str) -> String {
        format!(
            "p50 {} {unit} ({}–{}, n={})",
            num(self.p50),
            num(self.min),
            num(self.max),
            self.n
        )
    }
}

/// A number with about three significant digits.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        thousands(x.round() as i64)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `12345` -> `12,345`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A ratio: `1.23x`.
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "–".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_formats() {
        let s = Summary::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!((s.p50, s.p99, s.min, s.max), (50.0, 99.0, 1.0, 100.0));
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(152.4), "152");
        assert_eq!(num(15.24), "15.2");
        assert_eq!(ratio(1.234), "1.23x");
        assert!(Summary::of(&[]).p50.is_nan());
    }
}
