//! Statistics over seeds: the 95% confidence half-width of a mean (Student's t), Welch's
//! t-test between two rows, and the verdict rules of the paper's claims. The t distribution
//! comes from `statrs` (its CDF and inverse CDF are the regularised incomplete beta function,
//! which is not worth writing by hand).
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean, sample standard deviation (n - 1) and count of the finite values.
pub fn summary(values: &[f64]) -> (f64, f64, usize) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { f64::NAN };
    (mean, sd, n)
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => t.inverse_cdf(0.975),
        Err(_) => f64::NAN,
    }
}

/// The half-width of the 95% confidence interval of a mean from its standard deviation and
/// count: `t(0.975, n - 1) * sd / sqrt(n)`; NaN below 2 values.
pub fn ci95(sd: f64, n: usize) -> f64 {
    if n < 2 {
        return f64::NAN;
    }
    t975((n - 1) as f64) * sd / (n as f64).sqrt()
}

/// Welch's t-test of `a` against `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Welch {
    /// mean(a) - mean(b).
    pub diff: f64,
    /// Standard error of the difference.
    pub se: f64,
    pub t: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// One-sided p-value of mean(a) > mean(b).
    pub p_greater: f64,
    /// One-sided p-value of mean(a) < mean(b).
    pub p_less: f64,
    /// Two-sided p-value.
    pub p_two_sided: f64,
}

impl Welch {
    /// The 95% confidence interval of the difference.
    pub fn ci95(&self) -> (f64, f64) {
        let h = t975(self.df) * self.se;
        (self.diff - h, self.diff + h)
    }
}

/// Welch's t-test; `None` when either side has fewer than 2 values.
pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (ma, sa, na) = summary(a);
    let (mb, sb, nb) = summary(b);
    if na < 2 || nb < 2 {
        return None;
    }
    let (va, vb) = (sa * sa / na as f64, sb * sb / nb as f64);
    let se = (va + vb).sqrt();
    let diff = ma - mb;
    if se == 0.0 {
        // Both sides constant: the difference is exact.
        let (pg, pl) = if diff > 0.0 {
            (0.0, 1.0)
        } else if diff < 0.0 {
            (1.0, 0.0)
        } else {
            (0.5, 0.5)
        };
        return Some(Welch {
            diff,
            se,
            t: diff.signum() * f64::INFINITY,
            df: (na + nb - 2) as f64,
            p_greater: pg,
            p_less: pl,
            p_two_sided: if diff == 0.0 { 1.0 } else { 0.0 },
        });
    }
    let df = (va + vb).powi(2) / (va * va / (na - 1) as f64 + vb * vb / (nb - 1) as f64);
    let t = diff / se;
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    let p_greater = 1.0 - dist.cdf(t);
    let p_less = dist.cdf(t);
    Some(Welch { diff, se, t, df, p_greater, p_less, p_two_sided: (2.0 * p_greater.min(p_less)).min(1.0) })
}

/// The significance level of every verdict.
pub const ALPHA: f64 = 0.05;

/// What the measurements say of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    Inconclusive,
    /// The claim cannot be tested in this profile (for example both rows are the same runs).
    NotTested,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotTested => "not tested",
        }
    }
}

/// `a` better than `b` (`a` above `b` after orienting the metric so that higher is better):
/// reproduced when Welch's one-sided p < [`ALPHA`] in the claimed direction; not reproduced
/// when p < [`ALPHA`] in the other direction; otherwise inconclusive.
pub fn better(w: &Welch) -> Verdict {
    if w.p_greater < ALPHA {
        Verdict::Reproduced
    } else if w.p_less < ALPHA {
        Verdict::NotReproduced
    } else {
        Verdict::Inconclusive
    }
}

/// `a` close to `b` within `margin`: reproduced when the 95% CI of the difference lies inside
/// `(-margin, margin)`; not reproduced when the difference is significant (two-sided p <
/// [`ALPHA`]) and its estimate lies outside the margin; otherwise inconclusive.
pub fn similar(w: &Welch, margin: f64) -> Verdict {
    let (lo, hi) = w.ci95();
    if lo > -margin && hi < margin {
        Verdict::Reproduced
    } else if w.p_two_sided < ALPHA && w.diff.abs() >= margin {
        Verdict::NotReproduced
    } else {
        Verdict::Inconclusive
    }
}

/// `a` brings no gain over `b`: not reproduced when `a` is above `b` with one-sided p <
/// [`ALPHA`]; reproduced when the upper end of the 95% CI of `a - b` is below `margin`;
/// otherwise inconclusive.
pub fn no_gain(w: &Welch, margin: f64) -> Verdict {
    if w.p_greater < ALPHA {
        Verdict::NotReproduced
    } else if w.ci95().1 < margin {
        Verdict::Reproduced
    } else {
        Verdict::Inconclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t, 0.975 quantile: df 1, 2, 4, 30.
        for (df, q) in [(1.0, 12.706_204_736), (2.0, 4.302_652_730), (4.0, 2.776_445_105), (30.0, 2.042_272_456)] {
            assert!((t975(df) - q).abs() < 1e-6, "df {df}: {} vs {q}", t975(df));
        }
        let (m, sd, n) = summary(&[1.0, 2.0, 3.0]);
        assert_eq!((m, sd, n), (2.0, 1.0, 3));
        assert!((ci95(sd, n) - 4.302_652_730 / 3f64.sqrt()).abs() < 1e-9);
        assert!(ci95(1.0, 1).is_nan());
    }

    #[test]
    fn welch_matches_scipy() {
        // scipy.stats.ttest_ind(a, b, equal_var=False): t = -3, df = 8, two-sided p = 0.0170716.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [4.0, 5.0, 6.0, 7.0, 8.0];
        let w = welch(&a, &b).unwrap();
        let (ma, _, _) = summary(&b);
        assert_eq!(ma, 6.0);
        assert!((w.diff + 3.0).abs() < 1e-12);
        assert!((w.t - (-3.0 / (2.5f64 / 5.0 + 2.5 / 5.0).sqrt())).abs() < 1e-9, "{w:?}");
        assert!((w.df - 8.0).abs() < 1e-9, "equal variances and sizes give df = 2(n-1): {w:?}");
        assert!((w.p_two_sided - 2.0 * w.p_less).abs() < 1e-12);
        assert!((w.p_two_sided - 0.017_071_6).abs() < 1e-6, "{w:?}");
        assert_eq!(better(&w), Verdict::NotReproduced);
        let w2 = welch(&b, &a).unwrap();
        assert_eq!(better(&w2), Verdict::Reproduced);
        assert!(welch(&[1.0], &b).is_none());
        // Unequal variances: t = -2.317029877015053, df = 6.2891408951326255, p = 0.05773055158242.
        let w = welch(&[1.0, 2.0, 3.0, 4.0, 5.5], &[4.0, 5.0, 6.0, 7.0, 12.0]).unwrap();
        assert!((w.t + 2.317_029_877_015_053).abs() < 1e-9, "{w:?}");
        assert!((w.df - 6.289_140_895_132_625).abs() < 1e-9, "{w:?}");
        assert!((w.p_two_sided - 0.057_730_551_582_42).abs() < 1e-7, "{w:?}");
    }

    #[test]
    fn verdicts_follow_their_rules() {
        let a = [50.0, 51.0, 49.0];
        let b = [50.5, 49.5, 50.0];
        let w = welch(&a, &b).unwrap();
        assert_eq!(better(&w), Verdict::Inconclusive);
        assert_eq!(similar(&w, 5.0), Verdict::Reproduced);
        assert_eq!(no_gain(&w, 5.0), Verdict::Reproduced);
        let far = [70.0, 71.0, 69.0];
        let w = welch(&far, &b).unwrap();
        assert_eq!(similar(&w, 5.0), Verdict::NotReproduced);
        assert_eq!(no_gain(&w, 5.0), Verdict::NotReproduced);
        // Constant sides: an exact difference.
        let w = welch(&[0.0, 0.0, 0.0], &[0.1, 0.1, 0.1]).unwrap();
        assert_eq!(better(&w), Verdict::NotReproduced);
    }
}
