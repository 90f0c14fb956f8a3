//! TLS for the page-server link, as CRIU's `--tls`: X.509 mutual authentication (each end presents a
//! certificate signed by the CA the other trusts), with rustls over ring. [`client_config`] is for our
//! page-server client (the daemon), [`server_config`] for our page server; both from the same files.
//!
//! CRIU's quirks, and why each is handled here:
//! - Our server speaks TLS 1.2 only. A TLS 1.3 server may send NewSessionTicket records after the
//!   handshake, unasked (OpenSSL always did, two by default). CRIU's lazy-pages daemon reads its
//!   page-server socket only in reply to its own GETs: when epoll reports the socket readable with no
//!   GET outstanding, page_server_async_read (criu/page-xfer.c) hits BUG_ON(list_empty(&async_reads))
//!   and the daemon dies. In TLS 1.2 a ticket travels inside the handshake and nothing follows it
//!   unasked. (A GnuTLS server, CRIU's own, sends no tickets, so our client may use TLS 1.3.)
//! - The TLS 1.2 suites are the forward-secret AEAD ones (ECDHE with AES-GCM or ChaCha20-Poly1305),
//!   all of which GnuTLS's default priority offers; they are exactly ring's TLS 1.2 suites.
//! - Our server puts each reply header and each piece of reply data in TLS records of their own (see
//!   crate::pageserver::conn): CRIU reads the header and the data with separate gnutls_record_recv
//!   calls after separate epoll wake-ups, and bytes of a record it did not ask for stay inside GnuTLS,
//!   invisible to epoll, so a header sharing a record with its data hangs it for good.
//! - Our client writes each request header as a record of its own: CRIU's TLS page server reads a
//!   header with one gnutls_record_recv of 32 bytes, which never returns more than one record's data.
//! - The client checks the server's name against the address dialled unless `--tls-no-cn-verify`,
//!   accepting a subject CN equal to it as GnuTLS does (verify.rs). The server checks no client name
//!   (only the CA), as our page server always did.
//! - A CRL (`--tls-cacrl`) applies on both sides; like GnuTLS, a certificate whose issuer has no CRL
//!   among those given is not refused for it.

pub mod files;
pub mod subject;
pub mod verify;

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};

pub use files::{TlsFileError, TlsFiles};

fn provider() -> CryptoProvider {
  rustls::crypto::ring::default_provider()
}

fn roots(id: &files::Identity) -> Result<Arc<RootCertStore>, TlsFileError> {
  let mut roots = RootCertStore::empty();
  for (i, c) in id.ca.iter().enumerate() {
    roots.add(c.clone()).map_err(|e| {
      TlsFileError::Invalid(
        "--tls-cacert",
        id.ca_path.clone(),
        format!("certificate {} is not a usable CA: {e}", i + 1),
      )
    })?;
  }
  Ok(Arc::new(roots))
}

fn crl_error(id: &files::Identity, e: impl std::fmt::Display) -> TlsFileError {
  TlsFileError::Invalid("--tls-cacrl", id.crl_path.clone(), format!("not a usable revocation list: {e}"))
}

/// Our client's configuration (the daemon's `--page-server --tls`): TLS 1.2 or 1.3, our certificate for
/// the server to check, the server's checked against the CA, the CRL and the name dialled.
pub fn client_config(f: &TlsFiles) -> Result<Arc<ClientConfig>, TlsFileError> {
  let id = f.load()?;
  let p = Arc::new(provider());
  let inner = WebPkiServerVerifier::builder_with_provider(roots(&id)?, p.clone())
    .with_crls(id.crls.clone())
    .allow_unknown_revocation_status()
    .build()
    .map_err(|e| crl_error(&id, format!("{e:?}")))?;
  let verifier = Arc::new(verify::ServerVerifier { inner, any_name: f.no_cn_verify });
  let cfg = ClientConfig::builder_with_provider(p)
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsFileError::Identity(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_client_auth_cert(id.chain, id.key)
    .map_err(|e| TlsFileError::Identity(e.to_string()))?;
  Ok(Arc::new(cfg))
}

/// Our page server's configuration: TLS 1.2 with forward-secret AEAD suites only (see the module
/// comment), a client certificate required and checked against the CA and the CRL.
pub fn server_config(f: &TlsFiles) -> Result<Arc<ServerConfig>, TlsFileError> {
  let id = f.load()?;
  let mut p = provider();
  p.cipher_suites.retain(|s| matches!(s, SupportedCipherSuite::Tls12(_)));
  let p = Arc::new(p);
  let verifier = WebPkiClientVerifier::builder_with_provider(roots(&id)?, p.clone())
    .with_crls(id.crls.clone())
    .allow_unknown_revocation_status()
    .build()
    .map_err(|e| crl_error(&id, format!("{e:?}")))?;
  let cfg = ServerConfig::builder_with_provider(p)
    .with_protocol_versions(&[&rustls::version::TLS12])
    .map_err(|e| TlsFileError::Identity(e.to_string()))?
    .with_client_cert_verifier(verifier)
    .with_single_cert(id.chain, id.key)
    .map_err(|e| TlsFileError::Identity(e.to_string()))?;
  Ok(Arc::new(cfg))
}
