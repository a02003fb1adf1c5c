//! A standalone data directory: its SQLite file, its generated credential
//! keys and its first admin token. The control plane's own commands (`keys`,
//! `tokens --data-dir`) open one as standalone mode does.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;

use crate::store::Store;

/// The SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "cardfleet.sqlite";
/// The generated credential keys inside the data directory (mode 0600).
pub const KEYS_FILE: &str = "keys.toml";
/// The first API token (roles admin and operator), written on first start
/// when the store has no token yet (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Name of that first token.
pub const ADMIN_TOKEN_NAME: &str = "standalone-admin";

/// Settings defaults for a data directory: its SQLite file and its keys,
/// generated on first use. A configuration file or the environment may
/// still override every one of them.
pub fn data_dir_defaults(dir: &Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let keys = load_or_create_keys(&dir.join(KEYS_FILE))?;
    Ok(vec![
        (
            "database.url",
            format!("sqlite://{}", dir.join(DATABASE_FILE).display()),
        ),
        ("database.max_connections", "4".into()),
        ("credentials.key_id", keys.key_id),
        ("credentials.encryption_key", keys.encryption_key),
        ("credentials.master_key", keys.master_key),
    ])
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Keys {
    key_id: String,
    encryption_key: String,
    master_key: String,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn load_or_create_keys(path: &Path) -> anyhow::Result<Keys> {
    if path.exists() {
        refuse_shared_keys_file(path)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return toml::from_str(&text)
            .with_context(|| format!("{} is not a keys file", path.display()));
    }
    let keys = Keys {
        key_id: "local-1".into(),
        encryption_key: random_hex(),
        master_key: random_hex(),
    };
    let text = format!(
        "# Keys of this standalone data directory: the credential encryption key\n\
         # and the management-key master key. Losing them loses every stored\n\
         # PIN and PUK and every card's management key. Keep a copy offline.\n{}",
        toml::to_string(&keys)?
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(keys)
}

/// Refuses a keys file the group or others may read or write: it holds
/// the keys to every stored PIN and PUK.
fn refuse_shared_keys_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} may be read by its group or others (mode {:o}); it holds the credential keys: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(())
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    #[cfg(unix)]
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
    #[cfg(not(unix))]
    fn mode_0600(&mut self) -> &mut Self {
        self
    }
}

/// On first start (the store has no token at all), creates the token
/// `standalone-admin` with roles admin and operator, so one person can run
/// the whole workstation, and writes its secret to `<data-dir>/admin-token`
/// (mode 0600). Returns the file's path when it wrote it.
pub async fn ensure_admin_token(store: &Store, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    use crate::store::tokens::{NewToken, Role};
    if store.has_tokens().await? {
        return Ok(None);
    }
    let path = dir.join(ADMIN_TOKEN_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let new = NewToken {
        name: ADMIN_TOKEN_NAME.into(),
        roles: vec![Role::Admin, Role::Operator],
        rack_id: None,
        single_use: false,
        expires_at: None,
    };
    let secret = store.create_token(&new, "standalone").await?;
    file.write_all(format!("{}\n", secret.expose()).as_bytes())?;
    file.sync_all()?;
    Ok(Some(path))
}

/// The data directory a new user gets without `--data-dir`.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("cardfleet-data")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_keys_file_others_may_read_is_refused_and_a_private_one_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let created = load_or_create_keys(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_keys(&path).unwrap().master_key,
            created.master_key
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_keys(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("644"), "{err}");
        assert!(!err.contains(&created.master_key));
    }
}
