//! The rack's X25519 key pair and its enrolment with the control plane.
//!
//! The private key lives in `worker.key_file`, created with mode 0600 on
//! first start; a key file that the group or others may read is refused.
//! The public key is enrolled through the API with a one-time token
//! (`cardfleet racks enroll-token RACK_ID`); success is recorded beside the
//! key file (`<key_file>.enrolled`) so a restart does not enrol again.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use cardfleet_schemas::sealing::RackSecretKey;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the rack key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the rack key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the rack key file {path} may be read by group or others (mode {mode:o}); \
         run `chmod 600 {path}` (and consider the key exposed) before starting"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the rack key file {0} does not hold a rack key (64 hex characters)")]
    Malformed(PathBuf),
}

const HEADER: &str =
    "# cardfleet rack private key (X25519). Secret: never copy it off this machine.\n";

/// Loads the rack key from `path`, or generates one there (mode 0600) when
/// the file does not exist yet. Returns the key and whether it is new.
pub fn load_or_create(path: &Path) -> Result<(RackSecretKey, bool), KeyFileError> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            check_mode(path, &meta)?;
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                KeyFileError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?);
            let hex_line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .ok_or_else(|| KeyFileError::Malformed(path.to_owned()))?;
            let bytes = Zeroizing::new(
                hex::decode(hex_line).map_err(|_| KeyFileError::Malformed(path.to_owned()))?,
            );
            let key = RackSecretKey::from_bytes(&bytes)
                .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = RackSecretKey::generate();
            write_new(path, &key)?;
            tracing::info!(
                path = %path.display(),
                key_id = %key.public_key().key_id(),
                "generated a new rack key"
            );
            Ok((key, true))
        }
        Err(source) => Err(KeyFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

fn write_new(path: &Path, key: &RackSecretKey) -> Result<(), KeyFileError> {
    let create = |source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(create)?;
    let text = Zeroizing::new(format!("{HEADER}{}\n", hex::encode(*key.to_bytes())));
    file.write_all(text.as_bytes()).map_err(create)?;
    file.sync_all().map_err(create)
}

/// Where a successful enrolment of the key in `key_file` is recorded.
pub fn enrolled_marker(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".enrolled");
    PathBuf::from(name)
}

/// What the marker records: which rack and key were enrolled, where, when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Enrolment {
    pub rack_id: String,
    pub key_id: String,
    pub api_url: String,
    pub enrolled_at: chrono::DateTime<chrono::Utc>,
}

/// The recorded enrolment of `key` for `rack_id`, if there is one for
/// exactly that rack and key.
pub fn recorded_enrolment(
    key_file: &Path,
    rack_id: &str,
    key: &RackSecretKey,
) -> Option<Enrolment> {
    let text = std::fs::read_to_string(enrolled_marker(key_file)).ok()?;
    let e: Enrolment = serde_json::from_str(&text).ok()?;
    (e.rack_id == rack_id && e.key_id == key.public_key().key_id()).then_some(e)
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the enrollment token is unknown, expired or already used (401); ask an admin for a new one: cardfleet racks enroll-token {0}"
    )]
    Unauthorized(String),
    #[error(
        "the enrollment token may not enrol rack '{0}' (403): it was made for another rack or is not a worker token"
    )]
    Forbidden(String),
    #[error("the control plane refused the enrolment with HTTP {status}: {code}")]
    Refused { status: u16, code: String },
    #[error("cannot reach the control plane at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("cannot record the enrolment beside the key file: {0}")]
    Record(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::api_tls::ApiTlsError),
}

/// Enrols the public half of `key` as the key of `rack_id` through the API
/// at `api_url` with the one-time `token`, then records it beside `key_file`.
/// `tls` says which CAs to trust and whether plain http is allowed.
pub async fn enroll(
    api_url: &str,
    tls: &crate::api_tls::ApiTls,
    token: &str,
    rack_id: &str,
    key: &RackSecretKey,
    key_file: &Path,
) -> Result<Enrolment, EnrollError> {
    let base = api_url.trim_end_matches('/');
    let url = format!("{base}/v1/racks/{rack_id}/enrollment");
    let b64 = base64::engine::general_purpose::STANDARD;
    let public_key = b64.encode(key.public_key().as_bytes());
    // The Ed25519 key the rack signs its results and events with.
    let signing_key = b64.encode(cardfleet_schemas::rack_identity::verifying_key(key));
    tls.check_url(base)?;
    let client = tls.client(std::time::Duration::from_secs(30))?;
    let response = client
        .post(&url)
        .bearer_auth(token)
        .json(&serde_json::json!({ "public_key": public_key, "signing_key": signing_key }))
        .send()
        .await
        .map_err(|source| EnrollError::Unreachable {
            url: base.to_owned(),
            source: source.without_url(),
        })?;
    let status = response.status().as_u16();
    match status {
        200 | 201 => {}
        401 => return Err(EnrollError::Unauthorized(rack_id.to_owned())),
        403 => return Err(EnrollError::Forbidden(rack_id.to_owned())),
        _ => {
            // The API's error body is `{message, code, type}`; only the code
            // is kept, so nothing the server echoed ends up in our logs.
            let code = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".into());
            return Err(EnrollError::Refused { status, code });
        }
    }
    let enrolment = Enrolment {
        rack_id: rack_id.to_owned(),
        key_id: key.public_key().key_id(),
        api_url: base.to_owned(),
        enrolled_at: chrono::Utc::now(),
    };
    let text = serde_json::to_string_pretty(&enrolment)
        .map_err(|e| EnrollError::Record(std::io::Error::other(e)))?;
    std::fs::write(enrolled_marker(key_file), text).map_err(EnrollError::Record)?;
    Ok(enrolment)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_loads_back_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("rack.key");
        let (key, new) = load_or_create(&path).unwrap();
        assert!(new);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, new) = load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(again.public_key(), key.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rack.key");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create(&path).err().unwrap();
        assert!(
            matches!(err, KeyFileError::Permissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_malformed_key_file_is_named_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rack.key");
        std::fs::write(&path, "not a key\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load_or_create(&path),
            Err(KeyFileError::Malformed(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    }

    #[test]
    fn the_marker_counts_only_for_its_rack_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rack.key");
        let (key, _) = load_or_create(&path).unwrap();
        assert!(recorded_enrolment(&path, "rack-1", &key).is_none());
        let e = Enrolment {
            rack_id: "rack-1".into(),
            key_id: key.public_key().key_id(),
            api_url: "http://cp".into(),
            enrolled_at: chrono::Utc::now(),
        };
        std::fs::write(enrolled_marker(&path), serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(recorded_enrolment(&path, "rack-1", &key), Some(e));
        assert!(recorded_enrolment(&path, "rack-2", &key).is_none());
        assert!(recorded_enrolment(&path, "rack-1", &RackSecretKey::generate()).is_none());
    }
}
