//! The disk queue against a real file system: the conformance suite, then what is its own:
//! depth, exact redelivery after a restart (a new `DiskQueue` on the same directory, and a
//! child process killed with SIGKILL), out-of-order acks, release order, and the `max_bytes`
//! bound.
#![cfg(feature = "disk")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backends::queue::disk::{DiskConfig, DiskQueue};
use backends::queue::{AckToken, Delivery, EventQueue, Record};
use backends::testing::{event_queue_suite, Order, QueueExpectations};
use backends::BackendError;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "bucketd-disk-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(i: usize) -> Record {
    Record {
        key: format!("visitor-{}", i % 97),
        value: format!("event-{i:08}").into_bytes(),
    }
}

fn index_of(d: &Delivery) -> usize {
    std::str::from_utf8(&d.record.value).unwrap()["event-".len()..]
        .parse()
        .unwrap()
}

fn open(dir: &Path) -> DiskQueue {
    DiskQueue::open(&DiskConfig::new(dir)).unwrap()
}

async fn publish_range(q: &DiskQueue, range: std::ops::Range<usize>, batch: usize) {
    let all: Vec<Record> = range.map(record).collect();
    for chunk in all.chunks(batch) {
        q.publish(chunk).await.unwrap();
    }
}

/// Receives until `n` deliveries arrived (or a receive comes back empty).
async fn receive_n(q: &dyn EventQueue, n: usize, max: usize) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = q
            .receive(max.min(n - out.len()), Duration::from_millis(500))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    out
}

fn tokens(ds: &[Delivery]) -> Vec<AckToken> {
    ds.iter().map(|d| d.token.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let dir = TempDir::new("conformance");
    let root = dir.path().to_owned();
    event_queue_suite(
        move |case| {
            let path = root.join(case);
            async move { Arc::new(open(&path)) as Arc<dyn EventQueue> }
        },
        QueueExpectations {
            backend: "disk",
            order: Order::Publish,
            exact_depth: true,
            patience: Duration::from_secs(5),
            release_latency: Duration::from_secs(1),
        },
    )
    .await;
}

#[tokio::test]
async fn depth_counts_records_waiting_and_survives_a_restart() {
    let dir = TempDir::new("round-trip");
    let q = open(dir.path());
    publish_range(&q, 0..5000, 500).await;
    assert_eq!(q.depth().await.unwrap(), Some(5000));

    let got = receive_n(&q, 5000, 700).await;
    assert_eq!(got.len(), 5000);
    assert_eq!(
        q.depth().await.unwrap(),
        Some(0),
        "in-flight records are not waiting"
    );
    q.ack(&tokens(&got)).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), Some(0));

    drop(q);
    let q = open(dir.path());
    assert_eq!(
        q.depth().await.unwrap(),
        Some(0),
        "acked records stay gone after a restart"
    );
}

#[tokio::test]
async fn unacked_records_are_redelivered_after_reopen() {
    let dir = TempDir::new("redeliver");
    let q = open(dir.path());
    publish_range(&q, 0..100, 30).await;
    let got = receive_n(&q, 100, 100).await;
    assert_eq!(got.len(), 100);
    q.ack(&tokens(&got[..40])).await.unwrap();
    drop(q);

    let q = open(dir.path());
    assert_eq!(q.depth().await.unwrap(), Some(60));
    let again = receive_n(&q, 100, 100).await;
    let idx: Vec<usize> = again.iter().map(index_of).collect();
    assert_eq!(idx, (40..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn out_of_order_acks_never_lose_records() {
    let dir = TempDir::new("out-of-order");
    let q = open(dir.path());
    publish_range(&q, 0..1000, 500).await;
    let got = receive_n(&q, 1000, 1000).await;
    // Ack every index not divisible by 7, in a scrambled order (stride 389 is coprime to 1000).
    let mut acked = BTreeSet::new();
    let mut to_ack = Vec::new();
    for k in 0..1000 {
        let i = (k * 389) % 1000;
        if i % 7 != 0 {
            acked.insert(i);
            to_ack.push(got[i].token.clone());
        }
    }
    for chunk in to_ack.chunks(37) {
        q.ack(chunk).await.unwrap();
    }
    drop(q);

    let q = open(dir.path());
    let rest: BTreeSet<usize> = receive_n(&q, 1000, 1000)
        .await
        .iter()
        .map(index_of)
        .collect();
    let expected: BTreeSet<usize> = (0..1000).filter(|i| i % 7 == 0).collect();
    assert_eq!(rest, expected);
}

#[tokio::test]
async fn release_makes_records_receivable_again() {
    let dir = TempDir::new("release");
    let q = open(dir.path());
    publish_range(&q, 0..20, 20).await;
    let first = receive_n(&q, 10, 10).await;
    assert_eq!(first.len(), 10);
    // Release the odd ones, ack the even ones.
    let (odd, even): (Vec<_>, Vec<_>) = first.iter().partition(|d| index_of(d) % 2 == 1);
    q.release(&odd.iter().map(|d| d.token.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    q.ack(&even.iter().map(|d| d.token.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), Some(15));

    // Released records come first, then the ones never received.
    let next: Vec<usize> = receive_n(&q, 15, 8).await.iter().map(index_of).collect();
    let mut expected = vec![1, 3, 5, 7, 9];
    expected.extend(10..20);
    assert_eq!(next, expected);
    // Releasing something acked or unknown does nothing; a token that is not one is an error.
    q.release(&[
        even[0].token.clone(),
        AckToken::Disk {
            batch: 12345,
            index: 0,
        },
    ])
    .await
    .unwrap();
    let garbage = AckToken::Kafka {
        partition: 0,
        offset: 0,
    };
    assert!(q.release(&[garbage]).await.is_err());
    assert!(q
        .receive(10, Duration::from_millis(20))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn receive_waits_for_a_publish() {
    let dir = TempDir::new("wait");
    let q: Arc<dyn EventQueue> = Arc::new(open(dir.path()));

    let t = Instant::now();
    assert!(q
        .receive(10, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(190),
        "waited only {waited:?}"
    );

    let publisher = {
        let q = Arc::clone(&q);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            q.publish(&[record(1)]).await.unwrap();
        })
    };
    let t = Instant::now();
    let got = q.receive(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "woken by the publish, not the timeout"
    );
    publisher.await.unwrap();
}

#[tokio::test]
async fn full_queue_refuses_whole_batches_until_acks_free_room() {
    let dir = TempDir::new("full");
    // Each record: 4 + key (10 or 11) + value (14) + 8 = about 37 bytes.
    let q = DiskQueue::open(&DiskConfig {
        path: dir.path().into(),
        max_bytes: 3_000,
    })
    .unwrap();
    let mut published = 0;
    let err: BackendError = loop {
        match q
            .publish(&(published..published + 10).map(record).collect::<Vec<_>>())
            .await
        {
            Ok(()) => published += 10,
            Err(e) => break e,
        }
        assert!(published < 1000, "the bound is never reached");
    };
    assert!(err.is_full(), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("queue full"), "{err}");
    assert!((70..=90).contains(&published), "published {published}");
    // The refused batch left nothing behind.
    assert_eq!(q.depth().await.unwrap(), Some(published as u64));

    // A batch larger than the whole bound can never fit.
    let huge = q
        .publish(&(0..200).map(record).collect::<Vec<_>>())
        .await
        .unwrap_err();
    assert!(huge.is_full());

    // Acks free room.
    let got = receive_n(&q, 20, 20).await;
    q.ack(&tokens(&got)).await.unwrap();
    q.publish(&(1000..1010).map(record).collect::<Vec<_>>())
        .await
        .unwrap();

    // The byte count survives a restart.
    drop(q);
    let q = DiskQueue::open(&DiskConfig {
        path: dir.path().into(),
        max_bytes: 3_000,
    })
    .unwrap();
    assert!(q
        .publish(&(0..20).map(record).collect::<Vec<_>>())
        .await
        .unwrap_err()
        .is_full());
    let all = receive_n(&q, 1000, 1000).await;
    assert_eq!(all.len(), published - 20 + 10);
    q.ack(&tokens(&all)).await.unwrap();
    drop(q);
    let q = DiskQueue::open(&DiskConfig {
        path: dir.path().into(),
        max_bytes: 3_000,
    })
    .unwrap();
    q.publish(&(0..70).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_acks_of_one_batch_free_it() {
    let dir = TempDir::new("concurrent-acks");
    let q = Arc::new(
        DiskQueue::open(&DiskConfig {
            path: dir.path().into(),
            max_bytes: 40_000,
        })
        .unwrap(),
    );
    // One batch of 800 records, acked by 8 tasks at once, 100 records each.
    q.publish(&(0..800).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    let got = receive_n(&*q, 800, 800).await;
    let mut tasks = Vec::new();
    for part in got.chunks(100) {
        let (q, t) = (q.clone(), tokens(part));
        tasks.push(tokio::spawn(async move { q.ack(&t).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), Some(0));
    // The batch's bytes are free: a batch as large fits again, twice over.
    q.publish(&(0..800).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(got);
    let q = Arc::try_unwrap(q).ok().unwrap();
    drop(q);
    let q = DiskQueue::open(&DiskConfig {
        path: dir.path().into(),
        max_bytes: 40_000,
    })
    .unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        Some(800),
        "only the second batch is left"
    );
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = TempDir::new("double-open");
    let _q = open(dir.path());
    let Err(err) = DiskQueue::open(&DiskConfig::new(dir.path())) else {
        panic!("opened twice");
    };
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("already open"), "{err}");
}

#[tokio::test]
async fn reopen_after_many_publishes_and_acks() {
    let dir = TempDir::new("reopen");
    {
        let q = open(dir.path());
        publish_range(&q, 0..2000, 250).await;
        let got = receive_n(&q, 500, 500).await;
        q.ack(&tokens(&got)).await.unwrap();
    }
    {
        let q = open(dir.path());
        publish_range(&q, 2000..2500, 250).await;
        let got = receive_n(&q, 3000, 400).await;
        let idx: Vec<usize> = got.iter().map(index_of).collect();
        assert_eq!(
            idx,
            (500..2500).collect::<Vec<_>>(),
            "new records follow the old ones"
        );
        q.ack(&tokens(&got)).await.unwrap();
    }
    let q = open(dir.path());
    assert_eq!(q.depth().await.unwrap(), Some(0));
    let f = std::fs::metadata(dir.path().join(backends::queue::disk::FILE_NAME)).unwrap();
    assert!(
        f.len() < 1 << 20,
        "an empty queue is compacted at open: {} bytes",
        f.len()
    );
}

/// Env var that turns `child_publisher` into the process this test kills.
const CHILD_DIR: &str = "BUCKETD_TEST_DISK_CHILD_DIR";

/// Not a test on its own: `survives_sigkill_of_a_publishing_process` runs this test binary
/// again with only this test and `CHILD_DIR` set. It publishes batches of 100 forever and
/// prints how many records are committed after each publish returns.
#[tokio::test]
async fn child_publisher() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let q = open(Path::new(&dir));
    let mut n = 0;
    loop {
        q.publish(&(n..n + 100).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        n += 100;
        println!("committed {n}");
    }
}

#[tokio::test]
async fn survives_sigkill_of_a_publishing_process() {
    let dir = TempDir::new("sigkill");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_publisher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut committed = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse().unwrap();
            if committed >= 3000 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-publish most likely
    child.wait().unwrap();
    assert!(committed >= 3000, "child stopped early at {committed}");

    let q = open(dir.path());
    let got = receive_n(&q, usize::MAX, 5000).await;
    // Every acknowledged publish is there, whole batches only, in order, nothing torn.
    assert!(
        got.len() >= committed,
        "lost records: {} < {committed}",
        got.len()
    );
    assert_eq!(got.len() % 100, 0, "a batch was torn");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.record, record(i));
    }
}

/// `cargo test --release -p backends --features disk --test queue_disk -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, run in release"]
async fn throughput() {
    let dir = TempDir::new("throughput");
    let q = open(dir.path());
    let n = 200_000;
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: format!("visitor-{}", i % 5000),
            value: vec![b'x'; 100],
        })
        .collect();
    let t = Instant::now();
    for chunk in records.chunks(500) {
        q.publish(chunk).await.unwrap();
    }
    let publish = t.elapsed();
    let t = Instant::now();
    let mut received = 0;
    while received < n {
        let got = q.receive(500, Duration::from_millis(100)).await.unwrap();
        received += got.len();
        q.ack(&tokens(&got)).await.unwrap();
    }
    let drain = t.elapsed();
    println!(
        "disk queue: publish {n} records (100 B values, batches of 500): {:.0}/s; \
         receive+ack in batches of 500: {:.0}/s",
        n as f64 / publish.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );
}

#[test]
#[allow(irrefutable_let_patterns)] // with only the disk feature, Disk is the only variant
fn config_parses_with_defaults_and_rejects_typos() {
    let c: backends::EventQueueConfig =
        serde_json::from_str(r#"{"type": "disk", "path": "/var/lib/bucketd/events"}"#).unwrap();
    let backends::EventQueueConfig::Disk(c) = c else {
        panic!("{c:?}")
    };
    assert_eq!(c, DiskConfig::new("/var/lib/bucketd/events"));
    assert_eq!(c.max_bytes, 1 << 30);
    let typo = serde_json::from_str::<backends::EventQueueConfig>(
        r#"{"type": "disk", "path": "/x", "max_byte": 5}"#,
    );
    assert!(typo.is_err());
}

/// The files in `dir` whose name starts with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// A queue file overwritten with garbage does not keep the daemon from starting: it is set
/// aside (kept, byte for byte, for an operator) and the queue starts empty and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_queue_file_is_set_aside_and_the_queue_starts_empty() {
    let dir = TempDir::new("garbage");
    let file = dir.path().join(backends::queue::disk::FILE_NAME);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &garbage).unwrap();

    let q = DiskQueue::open(&DiskConfig::new(dir.path())).expect("opens despite the garbage");
    assert_eq!(q.depth().await.unwrap(), Some(0));
    publish_range(&q, 0..10, 5).await;
    let got = receive_n(&q, 10, 100).await;
    assert_eq!(got.len(), 10);

    let aside = files_starting(
        dir.path(),
        &format!("{}.unreadable-", backends::queue::disk::FILE_NAME),
    );
    assert_eq!(aside.len(), 1, "the unreadable file is kept: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
}

/// A queue file cut short (a disk that lost its tail): the queue opens, and whatever it
/// delivers is records that were published, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_queue_file_opens_and_delivers_only_published_records() {
    let dir = TempDir::new("truncated");
    {
        let q = open(dir.path());
        publish_range(&q, 0..2_000, 100).await;
    }
    let file = dir.path().join(backends::queue::disk::FILE_NAME);
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let q = DiskQueue::open(&DiskConfig::new(dir.path())).expect("opens despite the truncation");
    let got = receive_n(&q, 2_000, 500).await;
    let indices: BTreeSet<usize> = got.iter().map(index_of).collect();
    assert_eq!(indices.len(), got.len(), "no record delivered twice");
    assert!(indices.iter().all(|&i| i < 2_000), "only published records");
    publish_range(&q, 5_000..5_010, 10).await;
    let more = receive_n(&q, 10, 100).await;
    assert!(more.iter().all(|d| (5_000..5_010).contains(&index_of(d))));
    assert_eq!(more.len(), 10, "the queue works after the truncation");
}
