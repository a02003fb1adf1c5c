//! HTTPS for the API: the rustls server configuration from
//! `http.tls.cert_file`, `key_file` and, for optional client certificates,
//! `client_ca_file`. The ring provider, as for the AMQP and PostgreSQL clients.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::settings::HttpTlsSettings;

fn certificates(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "cannot read PEM certificates from {} ({key})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {} ({key})", path.display());
    }
    Ok(certs)
}

/// The server configuration, or `None` when `http.tls` names no certificate.
pub fn server_config(tls: &HttpTlsSettings) -> anyhow::Result<Option<RustlsConfig>> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(cert_file, "http.tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "cannot read a PEM private key from {} (http.tls.key_file)",
            key_file.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca_file, "http.tls.client_ca_file")? {
                roots
                    .add(cert)
                    .context("a certificate in http.tls.client_ca_file is not a usable CA")?;
            }
            // A client without a certificate is still served: the bearer
            // token authenticates it. One with a certificate must present
            // one these CAs issued.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("http.tls.client_ca_file")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("http.tls.key_file does not match http.tls.cert_file")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(RustlsConfig::from_config(Arc::new(config))))
}
