//! Redaction of configuration for display (`config check`): secret keys and
//! the passwords inside URLs are replaced before anything is printed.

use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Keys whose values are secrets wherever they appear; a table under such a
/// key (e.g. `credentials.previous_keys`) has every value redacted.
pub const SECRET_KEYS: &[&str] = &[
    "encryption_key",
    "master_key",
    "previous_keys",
    "enrollment_token",
    "password",
    "token",
];

/// Redacts `value` in place: every value under a [`SECRET_KEYS`] key, and
/// the password of every URL (also in comma-separated URL lists).
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    redact_all(inner);
                } else {
                    redact(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => *text = redact_urls(text),
        _ => {}
    }
}

fn redact_all(value: &mut Value) {
    match value {
        Value::Object(map) => map.values_mut().for_each(redact_all),
        Value::Array(items) => items.iter_mut().for_each(redact_all),
        Value::Null => {}
        other => *other = Value::String(REDACTED.into()),
    }
}

/// `text` with the password of each URL in it (comma-separated) replaced:
/// `amqp://user:secret@host/` becomes `amqp://user:<redacted>@host/`.
pub fn redact_urls(text: &str) -> String {
    text.split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:{}{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        REDACTED,
        &rest[at..]
    )
}

/// Removes unset (null) values, which TOML cannot show.
pub fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// The effective configuration as TOML with secrets redacted and unset
/// keys left out: what `config check` prints.
pub fn to_redacted_toml<T: serde::Serialize>(settings: &T) -> Result<String, String> {
    let mut value = serde_json::to_value(settings).map_err(|e| e.to_string())?;
    redact(&mut value);
    drop_nulls(&mut value);
    toml::to_string(&value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_passwords_are_redacted_and_users_hosts_kept() {
        assert_eq!(
            redact_urls("amqp://guest:s3cret@10.0.0.1:5672/%2f"),
            "amqp://guest:<redacted>@10.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_urls("amqp://a:p1@h1/v,amqps://b:p2@h2:5671/v"),
            "amqp://a:<redacted>@h1/v,amqps://b:<redacted>@h2:5671/v"
        );
        assert_eq!(
            redact_urls("postgres://postgres@127.0.0.1/cf"),
            "postgres://postgres@127.0.0.1/cf"
        );
        assert_eq!(redact_urls("127.0.0.1:8080"), "127.0.0.1:8080");
        // An '@' in the password itself.
        assert_eq!(
            redact_urls("postgres://u:p@ss@db/x"),
            "postgres://u:<redacted>@db/x"
        );
    }

    #[test]
    fn secret_keys_are_redacted_wherever_they_are() {
        let mut v = json!({
            "credentials": { "key_id": "k2", "encryption_key": "aa", "master_key": "bb",
                             "previous_keys": { "k1": "cc" } },
            "worker": { "enrollment_token": "tok", "api_url": "http://cp:8080" },
            "database": { "url": "postgres://u:pw@db/cf" },
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["\"aa\"", "\"bb\"", "\"cc\"", "tok\"", ":pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(v["credentials"]["key_id"], "k2");
        assert_eq!(v["credentials"]["previous_keys"]["k1"], REDACTED);
        assert_eq!(v["worker"]["api_url"], "http://cp:8080");
    }

    #[test]
    fn unset_keys_are_left_out_of_the_toml() {
        #[derive(serde::Serialize)]
        struct S {
            a: Option<u8>,
            b: u8,
        }
        let text = to_redacted_toml(&S { a: None, b: 3 }).unwrap_or_default();
        assert_eq!(text.trim(), "b = 3");
    }
}
