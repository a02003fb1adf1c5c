//! A small client of the cardfleet API, used by the CLI and the demo; it
//! sends its bearer token with every request.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiClient {
    /// A client of the API at `base`, authenticating with `token` (a bearer
    /// secret from `cardfleet tokens create`) when given.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Self::with_ca(base, token, None)
    }

    /// As [`ApiClient::new`], trusting also the PEM CA certificates in
    /// `ca_file` for an `https://` API (a bureau's own CA); the system's
    /// roots are trusted too.
    pub fn with_ca(
        base: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .use_rustls_tls();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).with_context(|| {
                format!("cannot read the CA file {} (--ca-file)", path.display())
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("no PEM certificate in {} (--ca-file)", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: token.map(str::to_owned),
        })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, bytes)) = body {
            request = request.header("content-type", content_type).body(bytes);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the cardfleet API at {} (--api)", self.base))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = error["code"].as_str().unwrap_or("http_error");
            let message = error["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| status.to_string());
            if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
                bail!("{code}: {message} (HTTP 401); give a token with --token or CARDFLEET_TOKEN");
            }
            bail!("{code}: {message} (HTTP {})", status.as_u16());
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(serde_json::from_value(Value::Null)?);
        }
        serde_json::from_slice(&bytes).context("the API answered something that is not JSON")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        self.send(
            Method::POST,
            path,
            Some(("application/json", serde_json::to_vec(body)?)),
        )
        .await
    }

    pub async fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        self.send(
            Method::PUT,
            path,
            Some(("application/json", serde_json::to_vec(body)?)),
        )
        .await
    }

    /// A POST without a body whose answer is not JSON (PIN mailers, 202s);
    /// errors are reported as by the other calls.
    pub async fn post_for_text(&self, path: &str) -> anyhow::Result<String> {
        let mut request = self.http.post(format!("{}{}", self.base, path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the cardfleet API at {} (--api)", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!(
                "{}: {} (HTTP {})",
                error["code"].as_str().unwrap_or("http_error"),
                error["message"].as_str().unwrap_or(status.as_str()),
                status.as_u16()
            );
        }
        Ok(text)
    }

    pub async fn post_raw<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        self.send(Method::POST, path, Some((content_type, body)))
            .await
    }
}
