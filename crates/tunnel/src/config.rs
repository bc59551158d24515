//! The parts of HakuRiver's `config.toml` that both binaries read.
//!
//! HakuRiver keeps one TOML file per machine (`~/.hakuriver/config.toml`, or the path in
//! `HAKURIVER_CONFIG`) with sections such as `[network]`, `[paths]`, `[database]`,
//! `[timing]` and `[docker]`. We read it unchanged: unknown HakuRiver keys and sections
//! are ignored here, while our own sections (`[ssh_proxy]`, `[ssh_client]`) reject
//! misspelt keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// HakuRiver's default Host SSH proxy port.
pub const DEFAULT_PROXY_PORT: u16 = 8002;
/// Environment variable HakuRiver uses to point at its config file.
pub const CONFIG_ENV: &str = "HAKURIVER_CONFIG";

/// HakuRiver's `[network]` section (only the keys we use).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetworkSection {
    /// Address the Host binds its services to.
    pub host_bind_ip: Option<String>,
    /// Port of the Host SSH proxy.
    pub host_ssh_proxy_port: Option<u16>,
    /// Address clients use to reach the Host.
    pub host_reachable_address: Option<String>,
}

/// HakuRiver's `[database]` section.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DatabaseSection {
    /// Path of the Host's SQLite database.
    pub db_file: Option<PathBuf>,
}

/// HakuRiver's per-user config file, relative to `$HOME`.
pub const USER_CONFIG: &str = ".hakuriver/config.toml";

/// The config file in effect and whether the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The path, if any could be determined (no `$HOME` and nothing named → none).
    pub path: Option<PathBuf>,
    /// Named by `--config` or `$HAKURIVER_CONFIG` (then it must exist).
    pub explicit: bool,
}

/// Picks the config file the way HakuRiver does: `explicit` (the `--config` flag), else
/// `$HAKURIVER_CONFIG`, else `~/.hakuriver/config.toml` (whether or not it exists).
///
/// This is the one place that reads `HAKURIVER_CONFIG`.
pub fn locate(explicit: Option<&Path>) -> Located {
    if let Some(path) = explicit {
        return Located {
            path: Some(path.to_owned()),
            explicit: true,
        };
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Located {
            path: Some(PathBuf::from(path)),
            explicit: true,
        };
    }
    Located {
        path: std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(USER_CONFIG)),
        explicit: false,
    }
}

/// Like [`locate`], for a daemon with a system-wide file: a path the user named is kept
/// as is (it must exist); otherwise the per-user default if it is a file, else `system`
/// if it is a file, else none.
pub fn locate_with_system(explicit: Option<&Path>, system: &Path) -> Located {
    let located = locate(explicit);
    if located.explicit {
        return located;
    }
    Located {
        path: located
            .path
            .filter(|p| p.is_file())
            .or_else(|| Some(system.to_owned()).filter(|p| p.is_file())),
        explicit: false,
    }
}

/// A duration written in the config as seconds, integer or fractional (`10`, `0.5`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    /// Whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Seconds(Duration::from_secs(secs))
    }
}

impl fmt::Debug for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Number {
            Int(u64),
            Float(f64),
        }
        match Number::deserialize(deserializer)? {
            Number::Int(secs) => Ok(Seconds(Duration::from_secs(secs))),
            Number::Float(secs) if (0.0..1e12).contains(&secs) => {
                Ok(Seconds(Duration::from_secs_f64(secs)))
            }
            Number::Float(secs) => Err(serde::de::Error::custom(format!(
                "invalid duration {secs}: expected a non-negative number of seconds"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        a: Seconds,
        b: Seconds,
    }

    #[test]
    fn named_file_wins_and_is_explicit() {
        let named = Path::new("/nowhere/config.toml");
        let located = locate(Some(named));
        assert_eq!(located.path.as_deref(), Some(named));
        assert!(located.explicit);
        let located = locate_with_system(Some(named), Path::new("/etc/hostname"));
        assert_eq!(located.path.as_deref(), Some(named));
        assert!(located.explicit);
    }

    #[test]
    fn seconds_accept_int_and_float() {
        let t: T = toml::from_str("a = 10\nb = 0.25").expect("parse");
        assert_eq!(t.a.0, Duration::from_secs(10));
        assert_eq!(t.b.0, Duration::from_millis(250));
        assert!(toml::from_str::<T>("a = -1\nb = 1").is_err());
        assert!(toml::from_str::<T>("a = \"10s\"\nb = 1").is_err());
    }
}
