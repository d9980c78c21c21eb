//! Where a backup may be written: a new directory under the backup root (`--backup-root`),
//! never inside the live data directory or the rebuild's shadow store, which the next
//! rebuild deletes. Paths are judged after resolving `..` and symlinks.

use std::io;
use std::path::{Path, PathBuf};

use crate::replay;

/// Why a backup path is refused. Every variant but `Exists` and `Root` is the request's fault.
#[derive(Debug, thiserror::Error)]
pub enum BackupPathError {
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("must end in the name of a new directory")]
    NoName,
    #[error("{path}: its parent directory cannot be resolved: {source}")]
    Unresolvable { path: String, source: io::Error },
    #[error("{path} is inside the data directory {data_dir}")]
    InsideDataDir { path: String, data_dir: String },
    #[error(
        "{path} is inside {shadow}, the rebuild's shadow store, which the next rebuild deletes"
    )]
    InsideShadow { path: String, shadow: String },
    #[error("{path} is inside {staging}, where `tally restore` stages a copy and which it deletes")]
    InsideRestoreStaging { path: String, staging: String },
    #[error("{path} is outside the backup root {root} (--backup-root)")]
    OutsideRoot { path: String, root: String },
    #[error("{0} exists; a backup goes to a new directory")]
    Exists(String),
    #[error("the backup root {root} cannot be created: {source}")]
    Root { root: String, source: io::Error },
}

/// Where a path that need not exist yet really is: its parent resolved (`..`, symlinks), its
/// last component kept.
fn resolve_new(path: &Path) -> Result<PathBuf, BackupPathError> {
    let name = path.file_name().ok_or(BackupPathError::NoName)?;
    let parent = path.parent().ok_or(BackupPathError::NoName)?;
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent = parent
        .canonicalize()
        .map_err(|source| BackupPathError::Unresolvable {
            path: path.display().to_string(),
            source,
        })?;
    Ok(parent.join(name))
}

/// Checks `to` and returns it resolved. `root` is the backup root (created when missing);
/// `None` (the `tally backup` command, run by the operator on the host) checks only that the
/// copy stays out of the store's own directories.
pub fn backup_target(
    root: Option<&Path>,
    data_dir: &Path,
    to: &Path,
) -> Result<PathBuf, BackupPathError> {
    if !to.is_absolute() {
        return Err(BackupPathError::NotAbsolute);
    }
    // The root first: the first backup's parent may be the root itself.
    let root = match root {
        Some(root) => {
            let root_error = |source| BackupPathError::Root {
                root: root.display().to_string(),
                source,
            };
            std::fs::create_dir_all(root).map_err(root_error)?;
            Some(root.canonicalize().map_err(root_error)?)
        }
        None => None,
    };
    let target = resolve_new(to)?;
    let shown = target.display().to_string();
    if let Ok(data) = data_dir.canonicalize()
        && target.starts_with(&data)
    {
        return Err(BackupPathError::InsideDataDir {
            path: shown,
            data_dir: data.display().to_string(),
        });
    }
    if let Ok(shadow) = resolve_new(&replay::shadow_dir(data_dir))
        && target.starts_with(&shadow)
    {
        return Err(BackupPathError::InsideShadow {
            path: shown,
            shadow: shadow.display().to_string(),
        });
    }
    if let Ok(staging) = resolve_new(&crate::config::sibling_dir(data_dir, ".restoring"))
        && target.starts_with(&staging)
    {
        return Err(BackupPathError::InsideRestoreStaging {
            path: shown,
            staging: staging.display().to_string(),
        });
    }
    if let Some(root) = &root
        && (!target.starts_with(root) || &target == root)
    {
        return Err(BackupPathError::OutsideRoot {
            path: shown,
            root: root.display().to_string(),
        });
    }
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(BackupPathError::Exists(shown));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Layout {
        _dir: tempfile::TempDir,
        base: PathBuf,
        data: PathBuf,
        root: PathBuf,
    }

    fn layout() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let data = base.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let root = base.join("data.backups");
        Layout {
            _dir: dir,
            base,
            data,
            root,
        }
    }

    fn check(layout: &Layout, to: &Path) -> Result<PathBuf, BackupPathError> {
        backup_target(Some(&layout.root), &layout.data, to)
    }

    #[test]
    fn a_backup_goes_to_a_new_directory_under_the_root() {
        let layout = layout();
        let to = layout.root.join("nightly");
        assert_eq!(check(&layout, &to).unwrap(), to);
        assert!(layout.root.is_dir(), "the root is created on demand");
        std::fs::create_dir(&to).unwrap();
        assert!(matches!(
            check(&layout, &to),
            Err(BackupPathError::Exists(_))
        ));
        // `..` that stays under the root is fine.
        let via = layout.root.join("nightly").join("..").join("weekly");
        assert_eq!(check(&layout, &via).unwrap(), layout.root.join("weekly"));
    }

    #[test]
    fn refuses_paths_outside_the_root_or_in_the_store() {
        let layout = layout();
        std::fs::create_dir_all(&layout.root).unwrap();
        let escapes = layout.root.join("..").join("elsewhere");
        let outside = [
            PathBuf::from("/etc/tally-backup"),
            escapes,
            layout.base.join("data.backups-not"),
        ];
        for to in outside {
            let error = check(&layout, &to).unwrap_err();
            assert!(
                matches!(error, BackupPathError::OutsideRoot { .. }),
                "{to:?}: {error}"
            );
        }
        let error = check(&layout, &layout.data.join("copy")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::InsideDataDir { .. }),
            "{error}"
        );
        let error = check(&layout, &layout.base.join("data.rebuild")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::InsideShadow { .. }),
            "{error}"
        );
        let error = check(&layout, &layout.base.join("data.restoring")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::InsideRestoreStaging { .. }),
            "{error}"
        );
        // A symlink under the root that leads out of it.
        std::os::unix::fs::symlink(&layout.data, layout.root.join("link")).unwrap();
        let error = check(&layout, &layout.root.join("link").join("copy")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::InsideDataDir { .. }),
            "{error}"
        );
        std::os::unix::fs::symlink("/tmp", layout.root.join("tmp")).unwrap();
        let error = check(&layout, &layout.root.join("tmp").join("copy")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::OutsideRoot { .. }),
            "{error}"
        );
        // Unresolvable, relative or nameless paths.
        let error = check(&layout, &layout.root.join("missing").join("copy")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::Unresolvable { .. }),
            "{error}"
        );
        let error = check(&layout, Path::new("relative/copy")).unwrap_err();
        assert!(matches!(error, BackupPathError::NotAbsolute), "{error}");
        let error = check(&layout, &layout.root.join("..")).unwrap_err();
        assert!(matches!(error, BackupPathError::NoName), "{error}");
    }

    #[test]
    fn without_a_root_only_the_store_is_out_of_bounds() {
        let layout = layout();
        let to = layout.base.join("anywhere");
        assert_eq!(backup_target(None, &layout.data, &to).unwrap(), to);
        let error = backup_target(None, &layout.data, &layout.data.join("x")).unwrap_err();
        assert!(
            matches!(error, BackupPathError::InsideDataDir { .. }),
            "{error}"
        );
    }
}
