//! The disk queue on a full file system: a 2 MiB tmpfs made for the test (the tests run as
//! root; where `mount` is refused the test fails rather than skip, since no queue bound can
//! stand in for what a full disk does to redb). A publish on the full file system fails at once
//! with `NoSpace`, nothing is lost or corrupted, and once space is freed publishes succeed and
//! every published record is delivered.
#![cfg(feature = "disk")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::queue::disk::{DiskConfig, DiskQueue};
use backends::queue::{EventQueue, Record};
use backends::BackendError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(test: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("bucketd-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn batch(start: usize, n: usize) -> Vec<Record> {
    (start..start + n)
        .map(|i| Record {
            key: format!("visitor-{i}"),
            value: format!("{i:08}-{}", "x".repeat(400)).into_bytes(),
        })
        .collect()
}

/// Fills the rest of the file system with a file (written until ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_refuses_publishes_at_once_and_recovers_when_space_frees() {
    let fs = SmallFs::mount("disk-full", "2m");
    let dir = fs.path().join("events");
    let config = DiskConfig {
        path: dir.clone(),
        max_bytes: 1 << 30,
    };
    let queue = DiskQueue::open(&config).unwrap();
    let mut published = BTreeSet::new();
    let mut next = 0;
    // Fill the file system by publishing, then what is left with a file.
    for _ in 0..20 {
        let records = batch(next, 50);
        next += 50;
        if queue.publish(&records).await.is_ok() {
            published.extend(records.into_iter().map(|r| r.key));
        }
    }
    let filler = fill(fs.path());
    let mut refused = 0;
    for _ in 0..20 {
        let records = batch(next, 50);
        next += 50;
        let started = Instant::now();
        match queue.publish(&records).await {
            Ok(()) => published.extend(records.into_iter().map(|r| r.key)),
            Err(e) => {
                assert!(
                    matches!(e, BackendError::NoSpace { .. }),
                    "a full disk must say so, got {e:?}"
                );
                assert!(!e.is_retryable());
                assert!(started.elapsed() < Duration::from_secs(1));
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the file system never filled up");

    // Space frees: publishes succeed again without a restart, within a second (the queue
    // reopens its file at most every 250 ms).
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let records = batch(next, 50);
    while let Err(e) = queue.publish(&records).await {
        assert!(
            freed.elapsed() < Duration::from_secs(1),
            "still refused 1 s after space was freed: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    published.extend(records.into_iter().map(|r| r.key));

    // Everything published is delivered (duplicates allowed, none missing).
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < published.len() && Instant::now() < deadline {
        let ds = queue
            .receive(500, Duration::from_millis(200))
            .await
            .unwrap();
        let tokens: Vec<_> = ds.iter().map(|d| d.token.clone()).collect();
        got.extend(ds.into_iter().map(|d| d.record.key));
        queue.ack(&tokens).await.unwrap();
    }
    assert_eq!(
        got, published,
        "published records missing after the disk filled"
    );

    // The file is not corrupt: a new open reads it, nothing set aside.
    drop(queue);
    let reopened = DiskQueue::open(&config).unwrap();
    assert_eq!(reopened.depth().await.unwrap(), Some(0));
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("unreadable"))
        .collect();
    assert!(aside.is_empty(), "queue file set aside: {aside:?}");
}
