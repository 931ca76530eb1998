//! Path helpers: relative paths in a file resolve against that file's folder.

use std::path::{Component, Path, PathBuf};

/// Resolves `p` against `base` (a folder), expanding a leading `~/` to `$HOME`, and
/// normalizes `.` and `..` lexically so messages show short paths.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    let p = match p.strip_prefix("~") {
        Ok(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => p.to_path_buf(),
        },
        Err(_) => p.to_path_buf(),
    };
    if p.is_absolute() {
        normalize(&p)
    } else {
        normalize(&base.join(p))
    }
}

/// Lexical normalization: drops `.`, folds `a/..` (never past the start of a relative path).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// The folder a file lives in (`.` for a bare file name).
pub fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_relative_to_folder() {
        assert_eq!(
            resolve(Path::new("config"), Path::new("../runbooks")),
            PathBuf::from("runbooks")
        );
        assert_eq!(
            resolve(Path::new("config"), Path::new("cmdb.yaml")),
            PathBuf::from("config/cmdb.yaml")
        );
        assert_eq!(
            resolve(Path::new("config"), Path::new("/abs/x")),
            PathBuf::from("/abs/x")
        );
        assert_eq!(resolve(Path::new("."), Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(folder_of(Path::new("drover.yaml")), PathBuf::from("."));
    }
}
