//! Hostile clients and oversized inputs: silent and byte-a-second connections (HTTP/1 and the
//! HTTP/2 preface) are closed by the first-request deadline, idle keep-alive connections by the
//! idle bound, a flood of silent connections under a low `RLIMIT_NOFILE` does not lock real
//! clients out, and datafiles are bounded by `datafile.max_bytes` on every source (an admin
//! push may be larger than the API body limit).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::process::{serve_command_with, wait_ready};
use common::spawn_app;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closed `s` within `within` (a read ends or fails).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Writes `bytes` one a `every`, until the server closes the connection.
fn trickle(mut s: tokio::net::tcp::OwnedWriteHalf, bytes: &'static [u8], every: Duration) {
    tokio::spawn(async move {
        for b in bytes.iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_trickling_connections_are_closed_by_the_first_request_deadline() {
    let app = spawn_app(
        "limits-first-request",
        &[("BUCKETD__SERVER__HEADER_READ_TIMEOUT", "1s".into())],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // The HTTP/2 preface, one byte every 200 ms (hyper-util's protocol detection waits for it),
    // and an HTTP/1 head the same way.
    let mut trickling = Vec::new();
    for i in 0..40 {
        let (r, w) = TcpStream::connect(app.addr).await.unwrap().into_split();
        let bytes: &'static [u8] = if i % 2 == 0 {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        } else {
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        };
        trickle(w, bytes, Duration::from_millis(200));
        trickling.push(r);
    }
    let started = Instant::now();
    let mut open = 0;
    for s in &mut silent {
        if !closed_within(s, Duration::from_secs(3)).await {
            open += 1;
        }
    }
    for r in &mut trickling {
        let mut buf = [0u8; 64];
        let closed = matches!(
            tokio::time::timeout(Duration::from_secs(3), r.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        if !closed {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "connections still open after {:?}",
        started.elapsed()
    );
    // Real clients are still served.
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let app = spawn_app(
        "limits-idle",
        &[("BUCKETD__SERVER__HEADER_READ_TIMEOUT", "1s".into())],
    )
    .await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle keep-alive connection is closed"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_under_a_low_descriptor_limit_do_not_lock_clients_out() {
    let dir = common::scratch("limits-nofile");
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    // 128 descriptors for the whole daemon; the silent connections would stay for 30 s.
    let mut child = serve_command_with(&["prlimit", "--nofile=128:128"], None, &dir, port)
        .env("BUCKETD__SERVER__HEADER_READ_TIMEOUT", "30s")
        .spawn()
        .unwrap();
    wait_ready(&base).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut answered = 0;
    for _ in 0..30 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                answered += 1;
            }
        }
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        answered, 30,
        "every real request is answered amid 400 silent connections"
    );
    assert!(
        metrics.contains("bucketd_connections_closed_total{reason=\"evicted\"}"),
        "silent connections were evicted for real ones"
    );
    drop(silent);
}

/// A valid datafile padded to about `bytes` bytes (the padding is an unknown field, ignored).
fn padded_datafile(revision: &str, bytes: usize) -> Vec<u8> {
    let mut d = common::all_to("b", revision);
    d["padding"] = serde_json::Value::String("x".repeat(bytes));
    serde_json::to_vec(&d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_push_may_exceed_the_body_limit_up_to_max_bytes() {
    let app = spawn_app(
        "limits-push",
        &[
            ("BUCKETD__ADMIN__TOKEN", "tok".into()),
            ("BUCKETD__DATAFILE__MAX_BYTES", (3 << 20).to_string()),
        ],
    )
    .await;
    let push = |body: Vec<u8>| {
        app.client
            .put(app.url("/admin/datafile"))
            .bearer_auth("tok")
            .body(body)
            .send()
    };
    // 2 MiB: over the 1 MiB API body limit, under datafile.max_bytes.
    let r = push(padded_datafile("7", 2 << 20)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = push(padded_datafile("8", 4 << 20)).await.unwrap();
    assert_eq!(r.status().as_u16(), 413, "over datafile.max_bytes");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_source_larger_than_max_bytes_is_refused() {
    // A server answering every request with a 300 KiB datafile.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = padded_datafile("5", 300 << 10);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                let _ = s.write_all(head).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    let dir = common::scratch("limits-url");
    let env = std::collections::HashMap::from([
        ("BUCKETD__STATE_DIR".to_string(), dir.display().to_string()),
        ("BUCKETD__SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("BUCKETD__FLUSHER__ENABLED".into(), "false".into()),
        (
            "BUCKETD__DATAFILE__URL".into(),
            format!("http://{addr}/datafile.json"),
        ),
        (
            "BUCKETD__DATAFILE__MAX_BYTES".into(),
            (100 << 10).to_string(),
        ),
    ]);
    let settings = bucketd::config::load(None, &env).unwrap();
    let Err(err) = common::start(settings, dir).await else {
        panic!("a daemon started on a datafile over max_bytes");
    };
    assert!(
        format!("{err}").contains("max_bytes"),
        "refused for its size: {err}"
    );
}
