//! Where AWS credentials come from when they are not in the environment: the shared
//! credentials and config files (`~/.aws/credentials`, `~/.aws/config`), which object_store
//! does not read itself. Values are returned to the builder only; nothing here logs them.

use std::collections::HashMap;
use std::path::PathBuf;

/// Credentials and settings found for one AWS profile.
#[derive(Debug, Default, Clone)]
pub struct ProfileSettings {
    /// aws_access_key_id
    pub access_key_id: Option<String>,
    /// aws_secret_access_key
    pub secret_access_key: Option<String>,
    /// aws_session_token
    pub session_token: Option<String>,
    /// region (from the config file)
    pub region: Option<String>,
    /// endpoint_url (from either file)
    pub endpoint_url: Option<String>,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Parses an INI file into sections of key/value pairs.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone()).or_default().insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

/// Reads the profile named by `AWS_PROFILE` (or `default`) from the shared files.
pub fn aws_profile() -> ProfileSettings {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let creds_path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    let config_path =
        std::env::var_os("AWS_CONFIG_FILE").map(PathBuf::from).or_else(|| home().map(|h| h.join(".aws/config")));
    let mut s = ProfileSettings::default();
    if let Some(text) = creds_path.and_then(|p| std::fs::read_to_string(p).ok()) {
        let ini = parse_ini(&text);
        if let Some(sec) = ini.get(&profile) {
            s.access_key_id = sec.get("aws_access_key_id").cloned();
            s.secret_access_key = sec.get("aws_secret_access_key").cloned();
            s.session_token = sec.get("aws_session_token").cloned();
            s.endpoint_url = sec.get("endpoint_url").cloned();
        }
    }
    if let Some(text) = config_path.and_then(|p| std::fs::read_to_string(p).ok()) {
        let ini = parse_ini(&text);
        let name = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
        if let Some(sec) = ini.get(&name) {
            s.region = sec.get("region").cloned();
            if s.endpoint_url.is_none() {
                s.endpoint_url = sec.get("endpoint_url").cloned();
            }
            if s.access_key_id.is_none() {
                s.access_key_id = sec.get("aws_access_key_id").cloned();
                s.secret_access_key = sec.get("aws_secret_access_key").cloned();
                s.session_token = sec.get("aws_session_token").cloned();
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections() {
        let ini = parse_ini("[default]\naws_access_key_id = A\n# c\n[profile x]\nregion=eu-west-1\n");
        assert_eq!(ini["default"]["aws_access_key_id"], "A");
        assert_eq!(ini["profile x"]["region"], "eu-west-1");
    }
}
