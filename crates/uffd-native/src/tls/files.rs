//! CRIU's TLS files (`--tls-cacert`, `--tls-cacrl`, `--tls-cert`, `--tls-key`) with CRIU's default paths,
//! read and parsed once, for both ends of the page-server link. Every error names the option and the file.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::errors::Coded;

/// CRIU's defaults (criu/tls.c).
pub const DEFAULT_CACERT: &str = "/etc/pki/CA/cacert.pem";
pub const DEFAULT_CACRL: &str = "/etc/pki/CA/cacrl.pem";
pub const DEFAULT_CERT: &str = "/etc/pki/criu/cert.pem";
pub const DEFAULT_KEY: &str = "/etc/pki/criu/private/key.pem";

/// The files as given (None: CRIU's default path).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
  pub cacert: Option<PathBuf>,
  pub cacrl: Option<PathBuf>,
  pub cert: Option<PathBuf>,
  pub key: Option<PathBuf>,
  /// Client only: do not check the server certificate's name against the address dialled.
  pub no_cn_verify: bool,
}

/// The parsed material.
pub struct Identity {
  /// Where the CA and the CRL came from (for messages about their contents).
  pub ca_path: PathBuf,
  pub crl_path: PathBuf,
  /// The CA certificates that must have signed the peer.
  pub ca: Vec<CertificateDer<'static>>,
  /// Revocation lists (empty: none given, and no default one exists).
  pub crls: Vec<CertificateRevocationListDer<'static>>,
  /// Our certificate chain (ours first).
  pub chain: Vec<CertificateDer<'static>>,
  pub key: PrivateKeyDer<'static>,
}

/// Errors loading the TLS files (code `EOPTION`: the option names a bad file).
#[derive(Debug)]
pub enum TlsFileError {
  /// `{option} {file}: cannot read: {errno}`
  Read(&'static str, PathBuf, std::io::Error),
  /// `{option} {file}`: no PEM section of the expected kind in it
  Empty(&'static str, PathBuf, &'static str),
  /// `{option} {file}`: a PEM section that does not decode, or a certificate/CRL that does not parse
  Invalid(&'static str, PathBuf, String),
  /// the certificate, key and CA do not make a usable identity (a key of another certificate, …)
  Identity(String),
}

impl std::fmt::Display for TlsFileError {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match self {
      TlsFileError::Read(o, p, e) => write!(f, "{o} {}: cannot read: {}", p.display(), errno_text(e)),
      TlsFileError::Empty(o, p, what) => write!(f, "{o} {}: no {what} in it (expected PEM)", p.display()),
      TlsFileError::Invalid(o, p, why) => write!(f, "{o} {}: {why}", p.display()),
      TlsFileError::Identity(why) => {
        write!(f, "--tls-cert/--tls-key/--tls-cacert: the TLS files do not form a usable identity: {why}")
      }
    }
  }
}

impl Coded for TlsFileError {
  fn code(&self) -> &'static str {
    "EOPTION"
  }
}

/// The errno names a file option's error shows (they are not error codes of ours).
const ERRNO_NAMES: [(i32, &str); 6] = [
  (libc::ENOENT, "ENOENT"),
  (libc::EACCES, "EACCES"),
  (libc::EISDIR, "EISDIR"),
  (libc::ENOTDIR, "ENOTDIR"),
  (libc::ELOOP, "ELOOP"),
  (libc::EPERM, "EPERM"),
];

/// `ENOENT (No such file or directory)`: the errno name first, as the TypeScript CLI always printed it.
fn errno_text(e: &std::io::Error) -> String {
  let text = e.to_string();
  match ERRNO_NAMES.iter().find(|(n, _)| e.raw_os_error() == Some(*n)) {
    Some((_, name)) => format!("{name} ({})", text.split(" (os error").next().unwrap_or(&text)),
    None => text,
  }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
  std::fs::read(path).map_err(|e| TlsFileError::Read(option, path.to_path_buf(), e))
}

fn pem_error(option: &'static str, path: &Path, e: pem::Error) -> TlsFileError {
  TlsFileError::Invalid(option, path.to_path_buf(), format!("not valid PEM: {e:?}"))
}

/// Every section of type `T` in a PEM file; at least one.
fn all<T: PemObject>(
  option: &'static str,
  path: &Path,
  bytes: &[u8],
  what: &'static str,
) -> Result<Vec<T>, TlsFileError> {
  let items = T::pem_slice_iter(bytes).collect::<Result<Vec<T>, _>>().map_err(|e| pem_error(option, path, e))?;
  if items.is_empty() {
    return Err(TlsFileError::Empty(option, path.to_path_buf(), what));
  }
  Ok(items)
}

impl TlsFiles {
  /// Reads every file first (so a missing one is reported before a bad one, whichever option it is),
  /// then parses them.
  ///
  /// The CRL: CRIU treats a missing default CRL as "no CRL", but a CRL named on the command line must exist.
  pub fn load(&self) -> Result<Identity, TlsFileError> {
    let crl_path = self.cacrl.clone().unwrap_or_else(|| DEFAULT_CACRL.into());
    let crl = if self.cacrl.is_some() || crl_path.exists() { Some(read("--tls-cacrl", &crl_path)?) } else { None };
    let ca_path = self.cacert.clone().unwrap_or_else(|| DEFAULT_CACERT.into());
    let ca = read("--tls-cacert", &ca_path)?;
    let cert_path = self.cert.clone().unwrap_or_else(|| DEFAULT_CERT.into());
    let cert = read("--tls-cert", &cert_path)?;
    let key_path = self.key.clone().unwrap_or_else(|| DEFAULT_KEY.into());
    let key = read("--tls-key", &key_path)?;

    let crls = match crl {
      Some(b) => all("--tls-cacrl", &crl_path, &b, "certificate revocation list")?,
      None => Vec::new(),
    };
    let ca = all("--tls-cacert", &ca_path, &ca, "certificate")?;
    let chain = all("--tls-cert", &cert_path, &cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| match e {
      pem::Error::NoItemsFound => TlsFileError::Empty("--tls-key", key_path.clone(), "private key"),
      e => pem_error("--tls-key", &key_path, e),
    })?;
    Ok(Identity { ca_path, crl_path, ca, crls, chain, key })
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn files(dir: &Path) -> TlsFiles {
    TlsFiles {
      cacert: Some(dir.join("ca.pem")),
      cacrl: None,
      cert: Some(dir.join("cert.pem")),
      key: Some(dir.join("key.pem")),
      no_cn_verify: false,
    }
  }

  #[test]
  fn errors_name_the_option_and_the_file() {
    let dir = std::env::temp_dir().join(format!("lazy-tls-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = files(&dir);
    let e = f.load().err().unwrap();
    assert!(e.to_string().starts_with(&format!("--tls-cacert {}/ca.pem: cannot read: ENOENT", dir.display())), "{e}");
    assert_eq!(e.code(), "EOPTION");
    std::fs::write(dir.join("ca.pem"), "not pem at all\n").unwrap();
    std::fs::write(dir.join("cert.pem"), "").unwrap();
    // The key is missing: reported before the unparsable CA, because every file is read first.
    let e = f.load().err().unwrap();
    assert!(e.to_string().starts_with("--tls-key "), "{e}");
    std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n").unwrap();
    assert_eq!(
      f.load().err().unwrap().to_string(),
      format!("--tls-cacert {}/ca.pem: no certificate in it (expected PEM)", dir.display())
    );
    let crl = TlsFiles { cacrl: Some(dir.join("nope.crl")), ..f.clone() };
    assert!(crl.load().err().unwrap().to_string().starts_with("--tls-cacrl "));
    std::fs::remove_dir_all(&dir).unwrap();
  }
}
