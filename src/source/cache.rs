//! The on-disk copy of each project's last good datafile, written atomically whenever one is
//! installed and read at start when the source cannot be reached.

use super::SourceError;
use crate::core::ProjectConfig;
use std::path::Path;

/// Writes `bytes` to `path` via a temporary file and rename, so readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The cached datafile at `path`, parsed; `None` when there is none to read.
pub(super) async fn load(path: &Path) -> Result<Option<ProjectConfig>, SourceError> {
    let Ok(bytes) = tokio::fs::read(path).await else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || ProjectConfig::parse(&bytes))
        .await
        .map_err(|j| SourceError::Read {
            path: path.display().to_string(),
            message: j.to_string(),
        })?
        .map(Some)
        .map_err(|source| SourceError::Invalid {
            origin: format!("cache:{}", path.display()),
            source,
        })
}
