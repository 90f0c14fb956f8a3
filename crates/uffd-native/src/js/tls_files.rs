//! `RawTlsFiles`: CRIU's TLS files as the page-server client and server take them from JS.

use napi_derive::napi;

/// CRIU's TLS files (`--tls-cacert`, `--tls-cacrl`, `--tls-cert`, `--tls-key`; an absent one is CRIU's
/// default path) and, for a client, `--tls-no-cn-verify`.
#[napi(object)]
pub struct RawTlsFiles {
  pub cacert: Option<String>,
  pub cacrl: Option<String>,
  pub cert: Option<String>,
  pub key: Option<String>,
  pub no_cn_verify: Option<bool>,
}

impl From<RawTlsFiles> for crate::tls::TlsFiles {
  fn from(t: RawTlsFiles) -> Self {
    crate::tls::TlsFiles {
      cacert: t.cacert.map(Into::into),
      cacrl: t.cacrl.map(Into::into),
      cert: t.cert.map(Into::into),
      key: t.key.map(Into::into),
      no_cn_verify: t.no_cn_verify.unwrap_or(false),
    }
  }
}
