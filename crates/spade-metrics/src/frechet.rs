//! Gaussian statistics of features and the Frechet distance between two of them.
//!
//! Statistics are the mean and the covariance with the `N - 1` denominator (`np.cov(x,
//! rowvar=False)`), in f64. The distance is
//! `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))`, with the last trace computed as
//! `sum_i sqrt(max(l_i, 0))` over the eigenvalues `l_i` of the symmetric positive
//! semi-definite `sqrt(S1) S2 sqrt(S1)` (same spectrum as `S1 S2`), both obtained from
//! symmetric eigendecompositions (faer), not a general matrix square root.
use faer::{Mat, Side};

use crate::error::{MetricsError, Result};

/// Mean and covariance of a set of feature vectors (pytorch-fid's `mu`, `sigma`).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Mean, `dim` values.
    pub mu: Vec<f64>,
    /// Covariance, `dim * dim` values, row-major (symmetric).
    pub sigma: Vec<f64>,
    /// Feature dimension.
    pub dim: usize,
}

impl GaussianStats {
    /// Statistics of `n` row-major feature vectors of width `dim` (`features.len() == n *
    /// dim`), covariance with the `n - 1` denominator. Needs `n >= 2`.
    pub fn from_features(features: &[f64], dim: usize) -> Result<Self> {
        if dim == 0 || !features.chunks_exact(dim).remainder().is_empty() {
            return Err(MetricsError::invalid(
                "feature array length",
                features.len(),
                format!("a positive multiple of the feature width {dim}"),
            ));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(MetricsError::invalid("number of feature vectors", n, "at least 2 for an N-1 covariance"));
        }
        let mut mu = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, v) in mu.iter_mut().zip(row) {
                *m += v;
            }
        }
        for m in mu.iter_mut() {
            *m /= n as f64;
        }
        let centered = Mat::<f64>::from_fn(n, dim, |i, j| features[i * dim + j] - mu[j]);
        let cov = centered.transpose() * &centered;
        let denom = (n - 1) as f64;
        let mut sigma = vec![0f64; dim * dim];
        for i in 0..dim {
            for j in 0..dim {
                sigma[i * dim + j] = cov[(i, j)] / denom;
            }
        }
        Ok(Self { mu, sigma, dim })
    }

    /// Checks that the shapes agree (`mu` has `dim` values, `sigma` `dim * dim`).
    pub fn validate(&self) -> Result<()> {
        if self.mu.len() != self.dim || self.sigma.len() != self.dim * self.dim {
            return Err(MetricsError::invalid(
                "statistics shapes (mu, sigma)",
                format!("({}, {})", self.mu.len(), self.sigma.len()),
                format!("({}, {}) for dimension {}", self.dim, self.dim * self.dim, self.dim),
            ));
        }
        Ok(())
    }

    fn sigma_mat(&self) -> Mat<f64> {
        Mat::from_fn(self.dim, self.dim, |i, j| {
            // Symmetrise so that round-off in a stored file cannot break the symmetric solver.
            0.5 * (self.sigma[i * self.dim + j] + self.sigma[j * self.dim + i])
        })
    }
}

/// Symmetric eigendecomposition `A = U diag(s) U^T` of a symmetric matrix.
fn sym_eigen(a: &Mat<f64>) -> Result<(Mat<f64>, Vec<f64>)> {
    let evd = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| MetricsError::Linalg(format!("symmetric eigendecomposition failed: {e:?}")))?;
    let s = evd.S().column_vector().iter().copied().collect();
    Ok((evd.U().to_owned(), s))
}

/// `tr(sqrt(S1 S2))` from the eigenvalues of `sqrt(S1) S2 sqrt(S1)`; negative eigenvalues
/// (round-off on singular covariances) count as zero.
pub fn trace_sqrt_product(s1: &GaussianStats, s2: &GaussianStats) -> Result<f64> {
    let a = s1.sigma_mat();
    let b = s2.sigma_mat();
    let (u, l) = sym_eigen(&a)?;
    let n = a.nrows();
    let mut us = u.clone();
    for j in 0..n {
        let r = l[j].max(0.0).sqrt();
        for i in 0..n {
            us[(i, j)] *= r;
        }
    }
    let sqrt_a = &us * u.transpose();
    let m = &sqrt_a * &b * &sqrt_a;
    let m = Mat::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let (_, mu) = sym_eigen(&m)?;
    Ok(mu.iter().map(|&x| x.max(0.0).sqrt()).sum())
}

/// Squared Frechet distance between two Gaussians (what pytorch-fid reports as FID when the
/// statistics come from its Inception pool3 features).
pub fn frechet_distance(s1: &GaussianStats, s2: &GaussianStats) -> Result<f64> {
    s1.validate()?;
    s2.validate()?;
    if s1.dim != s2.dim {
        return Err(MetricsError::invalid(
            "feature dimension of the second statistics",
            s2.dim,
            format!("{} as in the first", s1.dim),
        ));
    }
    let n = s1.dim;
    let diff2: f64 = s1.mu.iter().zip(&s2.mu).map(|(a, b)| (a - b) * (a - b)).sum();
    let tr1: f64 = (0..n).map(|i| s1.sigma[i * n + i]).sum();
    let tr2: f64 = (0..n).map(|i| s2.sigma[i * n + i]).sum();
    let tr_covmean = trace_sqrt_product(s1, s2)?;
    Ok(diff2 + tr1 + tr2 - 2.0 * tr_covmean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_n_minus_1() {
        // Rows (1, 2), (3, 6): mean (2, 4); cov with N-1 = [[2, 4], [4, 8]].
        let s = GaussianStats::from_features(&[1.0, 2.0, 3.0, 6.0], 2).unwrap();
        assert_eq!(s.mu, vec![2.0, 4.0]);
        assert_eq!(s.sigma, vec![2.0, 4.0, 4.0, 8.0]);
    }

    #[test]
    fn diagonal_gaussians_closed_form() {
        // Diagonal covariances: d = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
        let s1 =
            GaussianStats { mu: vec![0.0, 1.0, 2.0], sigma: vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 9.0], dim: 3 };
        let s2 = GaussianStats {
            mu: vec![1.0, 1.0, 0.0],
            sigma: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 16.0],
            dim: 3,
        };
        let d = frechet_distance(&s1, &s2).unwrap();
        let expected = (1.0 + 0.0 + 4.0) + (2.0f64 - 1.0).powi(2) + 0.0 + (3.0f64 - 4.0).powi(2);
        assert!((d - expected).abs() < 1e-12, "{d} vs {expected}");
    }

    #[test]
    fn identical_stats_have_zero_distance_even_when_singular() {
        // Rank-1 covariance (singular): distance to itself must still be ~0.
        let s = GaussianStats::from_features(&[1.0, 2.0, 3.0, 6.0, 5.0, 10.0], 2).unwrap();
        let d = frechet_distance(&s, &s).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn non_commuting_covariances() {
        // S1 = [[2,1],[1,2]], S2 = diag(1, 4): tr sqrt(S1 S2) = sqrt(tr(S1S2) + 2 sqrt(det(S1S2)))
        // for 2x2 with positive eigenvalues: tr(S1 S2) = 2 + 8 = 10, det = 3 * 4 = 12.
        let s1 = GaussianStats { mu: vec![0.0, 0.0], sigma: vec![2.0, 1.0, 1.0, 2.0], dim: 2 };
        let s2 = GaussianStats { mu: vec![0.0, 0.0], sigma: vec![1.0, 0.0, 0.0, 4.0], dim: 2 };
        let t = trace_sqrt_product(&s1, &s2).unwrap();
        let expected = (10.0 + 2.0 * 12f64.sqrt()).sqrt();
        assert!((t - expected).abs() < 1e-12, "{t} vs {expected}");
        let d = frechet_distance(&s1, &s2).unwrap();
        assert!((d - (4.0 + 5.0 - 2.0 * expected)).abs() < 1e-12);
    }

    #[test]
    fn rejects_mismatched_dims_and_too_few_samples() {
        assert!(GaussianStats::from_features(&[1.0, 2.0], 2).is_err());
        assert!(GaussianStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
        let a = GaussianStats::from_features(&[1.0, 2.0, 3.0, 5.0], 2).unwrap();
        let b = GaussianStats::from_features(&[1.0, 2.0, 3.0], 1).unwrap();
        let e = frechet_distance(&a, &b).unwrap_err().to_string();
        assert!(e.contains("got 1"), "{e}");
    }
}
