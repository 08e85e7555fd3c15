//! A small file system made for a test: a tmpfs of a given size mounted on a directory
//! (the tests run as root in CI), unmounted when dropped. Where `mount` is refused the caller
//! gets [`SmallFs::Unmounted`] and must bound the queue by `max_bytes` instead — and say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub enum SmallFs {
    Mounted(PathBuf),
    /// `mount` failed (not root, no tmpfs): the directory is an ordinary one.
    Unmounted(PathBuf, String),
}

impl SmallFs {
    /// Creates `dir` and mounts a tmpfs of `size` (e.g. `"2m"`) on it.
    pub fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Self::Mounted(dir.to_path_buf()),
            Ok(o) => Self::Unmounted(
                dir.to_path_buf(),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ),
            Err(e) => Self::Unmounted(dir.to_path_buf(), e.to_string()),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Mounted(p) | Self::Unmounted(p, _) => p,
        }
    }

    pub fn is_mounted(&self) -> bool {
        matches!(self, Self::Mounted(_))
    }

    /// Fills what is left of the file system with `<dir>/filler` (written until it fails);
    /// delete the file to free the space again.
    pub fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if let Self::Mounted(dir) = self {
            let _ = Command::new("umount").arg("-l").arg(&*dir).status();
        }
    }
}
