//! Locating, checking and loading the Inception weights (`pt_inception-2015-12-05-*.pth`):
//! from a path, or from a Hugging Face hub cache through `hf-hub` (downloading only when
//! allowed), with the SHA-256 checked.
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};

use crate::error::{MetricsError, Result};
use crate::inception::FidInception;

/// File name of pytorch-fid's released weights; the suffix is the SHA-256 prefix.
pub const FID_WEIGHTS_FILE: &str = "pt_inception-2015-12-05-6726825d.pth";

/// Reads a PyTorch state dict into named tensors. The one place that picks the `.pth`
/// reader: `spade_io::pth` reads both the zip format and the legacy (pre-1.6) format.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(MetricsError::Weights {
            path: path.to_path_buf(),
            msg: "no such file (expected a PyTorch .pth state dict)".into(),
        });
    }
    spade_io::pth::load(path).map_err(|e| MetricsError::Weights {
        path: path.to_path_buf(),
        msg: format!("cannot read as a PyTorch state dict: {e}"),
    })
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| MetricsError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The SHA-256 prefix that torch hub's naming convention puts in a file name
/// (`name-<hex prefix of at least 8>.ext`), if any.
pub fn hash_prefix_from_filename(file: &str) -> Option<String> {
    let stem = Path::new(file).file_stem()?.to_str()?;
    let tail = stem.rsplit('-').next()?;
    (tail.len() >= 8 && tail.len() <= 64 && tail.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| tail.to_ascii_lowercase())
}

/// Checks a file's SHA-256 against `expected` (a full hex digest or a prefix of at least 8
/// hex digits); returns the full digest.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<String> {
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() < 8 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(MetricsError::invalid(
            format!("expected SHA-256 for {}", path.display()),
            &expected,
            "a hex digest or a hex prefix of at least 8 digits",
        ));
    }
    let actual = sha256_file(path)?;
    if !actual.starts_with(&expected) {
        return Err(MetricsError::HashMismatch { path: path.to_path_buf(), expected, actual });
    }
    Ok(actual)
}

/// A file in a Hugging Face hub model repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// Repository id, `org/name`.
    pub repo: String,
    /// File name inside the repository.
    pub file: String,
    /// Revision (branch, tag or commit); `main` when `None`.
    pub revision: Option<String>,
    /// Expected SHA-256 (full or prefix of at least 8 hex digits). When `None`, the prefix in
    /// the file name (torch hub convention) is used if there is one.
    pub sha256: Option<String>,
    /// Hub cache folder (the one holding `models--org--name`); `HF_HOME/hub` or
    /// `~/.cache/huggingface/hub` when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Download when the file is not in the cache (else fail).
    pub allow_download: bool,
}

impl HubFile {
    /// Parses `REPO:FILE` (`org/name:file.pth`), revision `main`, download allowed.
    pub fn parse(spec: &str) -> Result<Self> {
        let (repo, file) = spec
            .split_once(':')
            .ok_or_else(|| MetricsError::invalid("hub file", spec, "REPO:FILE, e.g. org/name:weights.pth"))?;
        if repo.is_empty() || file.is_empty() || !repo.contains('/') {
            return Err(MetricsError::invalid(
                "hub file",
                spec,
                "REPO:FILE with REPO as org/name and a non-empty FILE",
            ));
        }
        Ok(Self {
            repo: repo.into(),
            file: file.into(),
            revision: None,
            sha256: None,
            cache_dir: None,
            allow_download: true,
        })
    }

    fn hub_repo(&self) -> hf_hub::Repo {
        let rev = self.revision.clone().unwrap_or_else(|| "main".into());
        hf_hub::Repo::with_revision(self.repo.clone(), hf_hub::RepoType::Model, rev)
    }

    fn cache(&self) -> hf_hub::Cache {
        match &self.cache_dir {
            Some(d) => hf_hub::Cache::new(d.clone()),
            None => hf_hub::Cache::from_env(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> MetricsError {
        MetricsError::Hub { repo: self.repo.clone(), file: self.file.clone(), msg: msg.into() }
    }

    /// Local path of the file: from the cache, else downloaded (when allowed) through
    /// hf-hub's sync API into the same cache. The SHA-256 is checked (see [`HubFile::sha256`]).
    pub fn resolve(&self) -> Result<ResolvedWeights> {
        let cache = self.cache();
        let path = match cache.repo(self.hub_repo()).get(&self.file) {
            Some(p) => p,
            None if self.allow_download => {
                let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                    .build()
                    .map_err(|e| self.err(format!("cannot start the hub client: {e}")))?;
                api.repo(self.hub_repo()).get(&self.file).map_err(|e| self.err(format!("download failed: {e}")))?
            }
            None => {
                return Err(self.err(format!(
                    "not in the hub cache {} (looked for models--{}/snapshots/<refs/{}>/{}) and downloads are off",
                    cache.path().display(),
                    self.repo.replace('/', "--"),
                    self.revision.as_deref().unwrap_or("main"),
                    self.file
                )))
            }
        };
        let expected = self.sha256.clone().or_else(|| hash_prefix_from_filename(&self.file));
        let sha256 = match &expected {
            Some(h) => verify_sha256(&path, h)?,
            None => sha256_file(&path)?,
        };
        Ok(ResolvedWeights { path, sha256, verified: expected.is_some() })
    }
}

/// A weights file on disk with its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedWeights {
    pub path: PathBuf,
    /// Full hex SHA-256 of the file.
    pub sha256: String,
    /// Whether the digest was checked against an expected value.
    pub verified: bool,
}

impl ResolvedWeights {
    /// A local file: hashed, and checked against `expected` or, failing that, the prefix in
    /// its name when it follows the torch hub convention.
    pub fn from_path(path: &Path, expected: Option<&str>) -> Result<Self> {
        if !path.is_file() {
            return Err(MetricsError::Weights {
                path: path.to_path_buf(),
                msg: "no such file (expected pytorch-fid's pt_inception-2015-12-05-6726825d.pth)".into(),
            });
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let expected = expected.map(str::to_string).or_else(|| hash_prefix_from_filename(name));
        let sha256 = match &expected {
            Some(h) => verify_sha256(path, h)?,
            None => sha256_file(path)?,
        };
        Ok(Self { path: path.to_path_buf(), sha256, verified: expected.is_some() })
    }
}

/// Builds pytorch-fid's Inception from a state dict file.
pub fn load_fid_inception(path: &Path, device: &Device) -> Result<FidInception> {
    let tensors: HashMap<String, Tensor> = load_state_dict(path)?.into_iter().collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    FidInception::load(vb).map_err(|e| MetricsError::Weights {
        path: path.to_path_buf(),
        msg: format!("does not match pytorch-fid's Inception: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a cache as hf-hub (and huggingface_hub) do:
    /// `models--org--name/{refs/main, snapshots/<rev>/<file>}`.
    fn fake_cache(root: &Path, repo: &str, file: &str, content: &[u8]) -> PathBuf {
        let dir = root.join(format!("models--{}", repo.replace('/', "--")));
        let rev = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), rev).unwrap();
        let snap = dir.join("snapshots").join(rev);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join(file), content).unwrap();
        snap.join(file)
    }

    // SHA-256 of b"abc".
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256_known_answer() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), ABC);
        assert_eq!(verify_sha256(&p, "BA7816BF").unwrap(), ABC);
        let e = verify_sha256(&p, "00000000").unwrap_err();
        assert!(matches!(e, MetricsError::HashMismatch { .. }), "{e}");
        assert!(verify_sha256(&p, "ba78").is_err());
    }

    #[test]
    fn filename_hash_prefix() {
        assert_eq!(hash_prefix_from_filename(FID_WEIGHTS_FILE).as_deref(), Some("6726825d"));
        assert_eq!(hash_prefix_from_filename("weights.pth"), None);
        assert_eq!(hash_prefix_from_filename("model-2015.pth"), None);
    }

    #[test]
    fn hub_file_from_local_cache_without_network() {
        let dir = tempfile::tempdir().unwrap();
        let expected_path = fake_cache(dir.path(), "someorg/fid-inception", "w.pth", b"abc");
        let mut hf = HubFile::parse("someorg/fid-inception:w.pth").unwrap();
        hf.cache_dir = Some(dir.path().to_path_buf());
        hf.allow_download = false;
        hf.sha256 = Some(ABC.into());
        let r = hf.resolve().unwrap();
        assert_eq!(r.path, expected_path);
        assert_eq!(r.sha256, ABC);
        assert!(r.verified);

        // Wrong digest: rejected, naming the file.
        hf.sha256 = Some("deadbeef".into());
        let e = hf.resolve().unwrap_err().to_string();
        assert!(e.contains("w.pth") && e.contains("expected deadbeef"), "{e}");

        // Not in the cache and downloads off: a hub error naming the layout looked for.
        let mut missing = hf.clone();
        missing.file = "other.pth".into();
        let e = missing.resolve().unwrap_err().to_string();
        assert!(e.contains("models--someorg--fid-inception"), "{e}");
    }

    #[test]
    fn hub_spec_parsing() {
        let h = HubFile::parse("a/b:c/d.pth").unwrap();
        assert_eq!((h.repo.as_str(), h.file.as_str()), ("a/b", "c/d.pth"));
        assert!(HubFile::parse("nofile").is_err());
        assert!(HubFile::parse("norepo:x.pth").is_err());
    }

    #[test]
    fn missing_weights_file_is_named() {
        let e = load_fid_inception(Path::new("/nonexistent/w.pth"), &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/w.pth"), "{e}");
    }
}
