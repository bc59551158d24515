//! Where the user's KohakuRiver API token comes from: `--token-file PATH`, else
//! `$KOHAKURIVER_TOKEN`, else KohakuRiver's own `~/.kohakuriver/auth.json` (its `token`
//! key, as `kohakuriver auth login` writes it).
//!
//! The token is a password. It is sent only inside a verified TLS session (see
//! [`crate::tunnel::Connector`]), never passed to a program we start, and no message
//! here quotes it: errors name the file, never its contents.

use std::path::{Path, PathBuf};

use hakuriver_tunnel::protocol::Token;

use crate::error::ClientError;

/// The environment variable KohakuRiver users may keep their token in.
pub const TOKEN_ENV: &str = "KOHAKURIVER_TOKEN";
/// KohakuRiver's credentials file, relative to `$HOME`.
pub const AUTH_FILE: &str = ".kohakuriver/auth.json";

/// Where a token was found (for `-v`, never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token-file`.
    File(PathBuf),
    /// `$KOHAKURIVER_TOKEN`.
    Env,
    /// `~/.kohakuriver/auth.json`.
    AuthJson(PathBuf),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(p) | TokenSource::AuthJson(p) => p.display().fmt(f),
            TokenSource::Env => f.write_str(TOKEN_ENV),
        }
    }
}

/// The token to use, if any: `token_file` (must be readable), else the environment,
/// else `~/.kohakuriver/auth.json` (when present).
pub fn find(token_file: Option<&Path>) -> Result<Option<(Token, TokenSource)>, ClientError> {
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Token(format!("cannot read --token-file {}: {e}", path.display()))
        })?;
        let token = from_file_text(&text).ok_or_else(|| {
            ClientError::Token(format!(
                "--token-file {} holds no token (expected the token alone, or JSON with a \"token\" key)",
                path.display()
            ))
        })?;
        return Ok(Some((token, TokenSource::File(path.to_owned()))));
    }
    if let Some(value) = std::env::var_os(TOKEN_ENV).filter(|v| !v.is_empty()) {
        let token = value.to_str().and_then(Token::new).ok_or_else(|| {
            ClientError::Token(format!("${TOKEN_ENV} is set but holds no usable token"))
        })?;
        return Ok(Some((token, TokenSource::Env)));
    }
    let Some(path) = auth_json_path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => match from_auth_json(&text) {
            Some(token) => Ok(Some((token, TokenSource::AuthJson(path)))),
            None => {
                // KohakuRiver itself treats a broken file as "not logged in".
                tracing::warn!(
                    "{} has no \"token\" (run `kohakuriver auth login`); continuing without one",
                    path.display()
                );
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ClientError::Token(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn auth_json_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(AUTH_FILE))
}

/// A token file holds the token alone, or KohakuRiver's JSON.
fn from_file_text(text: &str) -> Option<Token> {
    if text.trim_start().starts_with('{') {
        from_auth_json(text)
    } else {
        Token::new(text)
    }
}

fn from_auth_json(text: &str) -> Option<Token> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("token")?.as_str().and_then(Token::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_and_auth_json() {
        assert_eq!(
            from_file_text("  abc\n").map(|t| t.expose().to_owned()),
            Some("abc".into())
        );
        assert_eq!(
            from_file_text("{\"token\": \"xyz\", \"username\": \"u\"}")
                .map(|t| t.expose().to_owned()),
            Some("xyz".into())
        );
        assert!(from_auth_json("{}").is_none());
        assert!(from_auth_json("not json").is_none());
        assert!(from_auth_json("{\"token\": 5}").is_none());
        assert!(from_file_text("\n").is_none());
    }

    #[test]
    fn errors_name_the_file_not_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        std::fs::write(&path, "{\"token\": \"\"}").expect("write");
        let err = find(Some(&path)).expect_err("empty token");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::write(&path, "s3cret-token").expect("write");
        let (token, source) = find(Some(&path)).expect("read").expect("token");
        assert_eq!(token.expose(), "s3cret-token");
        assert_eq!(source, TokenSource::File(path.clone()));
        let missing = dir.path().join("missing");
        let err = find(Some(&missing)).expect_err("missing");
        assert!(!err.to_string().contains("s3cret"));
    }
}
