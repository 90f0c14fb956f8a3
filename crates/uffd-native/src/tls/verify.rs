//! How our client judges the page server's certificate, as CRIU (GnuTLS) does: signed by the CA (and not
//! revoked), then named for the address dialled. webpki matches the name against the subjectAltName
//! only; GnuTLS also takes a subject CN equal to the address (many CRIU setups have certificates made
//! with `-subj /CN=10.0.0.1` and no SAN), so a name mismatch falls back to the CN here, on GnuTLS's terms:
//! only for a certificate whose subjectAltName names no host and with exactly one CN (see subject.rs).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::subject::subject_cn;

/// WebPki's verifier, with GnuTLS's CN fallback and CRIU's `--tls-no-cn-verify`.
#[derive(Debug)]
pub struct ServerVerifier {
  pub inner: Arc<WebPkiServerVerifier>,
  /// `--tls-no-cn-verify`: any name is fine (the chain must still be good).
  pub any_name: bool,
}

fn name_text(n: &ServerName<'_>) -> String {
  match n {
    ServerName::DnsName(d) => d.as_ref().to_owned(),
    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
    _ => String::new(),
  }
}

impl ServerCertVerifier for ServerVerifier {
  fn verify_server_cert(
    &self,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    ocsp: &[u8],
    now: UnixTime,
  ) -> Result<ServerCertVerified, Error> {
    match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
      // webpki checks the name last: a name error means the chain (and the CRL) was good.
      Err(Error::InvalidCertificate(
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
      )) if self.any_name => Ok(ServerCertVerified::assertion()),
      Err(Error::InvalidCertificate(
        e @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
      )) => {
        let want = name_text(server_name);
        match subject_cn(end_entity.as_ref()) {
          Some(cn) if !want.is_empty() && cn.eq_ignore_ascii_case(&want) => Ok(ServerCertVerified::assertion()),
          _ => Err(Error::InvalidCertificate(e)),
        }
      }
      r => r,
    }
  }

  fn verify_tls12_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, Error> {
    self.inner.verify_tls12_signature(message, cert, dss)
  }

  fn verify_tls13_signature(
    &self,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
  ) -> Result<HandshakeSignatureValid, Error> {
    self.inner.verify_tls13_signature(message, cert, dss)
  }

  fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
    self.inner.supported_verify_schemes()
  }
}

/// A handshake error in words a user can act on, naming the option involved.
pub fn describe(e: &Error) -> String {
  use rustls::AlertDescription as A;
  match e {
    Error::InvalidCertificate(c) => {
      let why = match c {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
          "it is not signed by the CA of --tls-cacert".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
          format!("its name does not match: {c} (neither a subjectAltName nor the subject CN; --tls-no-cn-verify skips this check)")
        }
        CertificateError::Revoked => "it is revoked (--tls-cacrl)".to_string(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!("it has expired: {c}"),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
          format!("it is not valid yet: {c}")
        }
        other => other.to_string(),
      };
      format!("the peer's certificate was refused: {why}")
    }
    Error::NoCertificatesPresented => {
      "the peer presented no certificate (mutual authentication needs --tls-cert)".into()
    }
    Error::AlertReceived(
      a @ (A::BadCertificate
      | A::UnknownCA
      | A::CertificateRequired
      | A::CertificateRevoked
      | A::CertificateExpired
      | A::AccessDenied
      | A::UnsupportedCertificate
      | A::CertificateUnknown),
    ) => {
      format!("the peer refused our certificate (alert {a:?}; check --tls-cert against the peer's CA)")
    }
    e => e.to_string(),
  }
}
