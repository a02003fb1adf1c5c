//! How the worker reaches the control plane's API for enrolment: over
//! HTTPS, trusting the system's roots plus `worker.api_ca_file`. Plain
//! `http://` would let a man in the middle swap the rack key, so it is
//! refused unless the operator says `worker.api_insecure` (`--insecure`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The worker's TLS choices for the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiTls {
    /// PEM CA certificates to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` API.
    pub insecure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error(
        "refusing to enrol over plain http ({0}): a man in the middle could swap the rack key; use https (worker.api_ca_file for the bureau's CA) or pass --insecure (worker.api_insecure) on a trusted network"
    )]
    PlainHttp(String),
    #[error("the API URL must start with https:// (or http:// with --insecure): {0}")]
    BadScheme(String),
    #[error("cannot read the CA file {path} (worker.api_ca_file): {why}")]
    CaFile { path: String, why: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl ApiTls {
    /// Refuses `url` unless it is https, or http and insecure is allowed.
    pub fn check_url(&self, url: &str) -> Result<(), ApiTlsError> {
        let lower = url.trim().to_ascii_lowercase();
        if lower.starts_with("https://") {
            Ok(())
        } else if lower.starts_with("http://") {
            if self.insecure {
                tracing::warn!(api = url, "enrolling over plain http (worker.api_insecure)");
                Ok(())
            } else {
                Err(ApiTlsError::PlainHttp(url.to_owned()))
            }
        } else {
            Err(ApiTlsError::BadScheme(url.to_owned()))
        }
    }

    /// An HTTP client trusting the system's roots and `ca_file`.
    pub fn client(&self, timeout: Duration) -> Result<reqwest::Client, ApiTlsError> {
        let mut builder = reqwest::Client::builder().timeout(timeout).use_rustls_tls();
        if let Some(path) = &self.ca_file {
            for cert in read_ca(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| ApiTlsError::Client(e.to_string()))
    }
}

fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, ApiTlsError> {
    let fail = |why: String| ApiTlsError::CaFile {
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_insecure_and_https_does_not() {
        let strict = ApiTls::default();
        assert!(strict.check_url("https://cp:8443").is_ok());
        assert!(matches!(
            strict.check_url("http://cp:8080"),
            Err(ApiTlsError::PlainHttp(_))
        ));
        assert!(matches!(
            strict.check_url("ftp://cp"),
            Err(ApiTlsError::BadScheme(_))
        ));
        let insecure = ApiTls {
            insecure: true,
            ..ApiTls::default()
        };
        assert!(insecure.check_url("http://cp:8080").is_ok());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = ApiTls {
            ca_file: Some("/nonexistent/ca.pem".into()),
            insecure: false,
        };
        let err = tls.client(Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
