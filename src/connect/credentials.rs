//! Credentials read from files at every new connection (issue 20): a
//! Kubernetes Secret mounted as files, rotated by rewriting them, or a token
//! refreshed by a sidecar. Nothing is cached for longer than one connection
//! attempt, except the last good content, used while the file cannot be read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{invalid, ConfigError};
use crate::connect::problem::Problem;
use crate::once_log::OnceLog;

/// One secret file: its content is read again at each [`SecretFile::read`].
#[derive(Debug)]
pub struct SecretFile {
    setting: &'static str,
    path: PathBuf,
    /// The last content read, for a moment when the file cannot be read
    /// (being replaced); the start refuses a file that cannot be read.
    last: Mutex<String>,
    problems: OnceLog,
}

impl SecretFile {
    /// Reads the file once, so that a missing or empty file stops the start.
    pub fn open(setting: &'static str, path: &Path) -> Result<Arc<Self>, ConfigError> {
        let content = read_trimmed(path).map_err(|e| invalid(setting, e))?;
        Ok(Arc::new(Self {
            setting,
            path: path.to_owned(),
            last: Mutex::new(content),
            problems: OnceLog::default(),
        }))
    }

    /// The file's current content; when it cannot be read, the last content
    /// read, and the problem is logged once.
    pub fn read(&self) -> String {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match read_trimmed(&self.path) {
            Ok(content) => {
                self.problems.clear();
                *last = content;
            }
            Err(problem) => {
                let problem = Problem::transient(format!(
                    "{}: {problem}; using its previous content",
                    self.setting
                ));
                self.problems.report("read a credentials file", &problem);
            }
        }
        last.clone()
    }
}

/// The file's content without its trailing newline (`echo` and editors add
/// one; no password or token ends with one).
fn read_trimmed(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_owned())
}

/// A credential fixed at start or read from a file at each connection.
#[derive(Debug, Clone)]
pub enum Credential {
    Fixed(String),
    File(Arc<SecretFile>),
}

impl Credential {
    pub fn get(&self) -> String {
        match self {
            Self::Fixed(value) => value.clone(),
            Self::File(file) => file.read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder removed when the guard drops.
    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("swisper-creds-")
            .tempdir()
            .unwrap()
    }

    #[test]
    fn each_read_sees_the_current_content_without_its_newline() {
        let dir = scratch();
        let path = dir.path().join("password");
        std::fs::write(&path, "first\n").unwrap();
        let file = SecretFile::open("X_FILE", &path).unwrap();
        assert_eq!(file.read(), "first");
        std::fs::write(&path, "second\r\n").unwrap();
        assert_eq!(file.read(), "second");
        // Being replaced: the last good content stands in.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.read(), "second");
        std::fs::write(&path, "third").unwrap();
        assert_eq!(Credential::File(file).get(), "third");
    }

    #[test]
    fn a_missing_or_empty_file_stops_the_start() {
        let dir = scratch();
        let missing = SecretFile::open("X_FILE", &dir.path().join("none")).unwrap_err();
        assert_eq!(missing.setting, "X_FILE");
        assert!(missing.problem.contains("cannot read"), "{missing}");
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let empty = SecretFile::open("X_FILE", &path).unwrap_err();
        assert!(empty.problem.contains("is empty"), "{empty}");
    }
}
