//! TLS on the listener over real TCP, with a CA made here (rcgen): HTTP/1.1 and HTTP/2 chosen
//! by ALPN, client certificates required and refused when missing, the certificate reloaded
//! on SIGHUP by the real binary, a handshake that never completes closed by the first-request
//! deadline, and `bucketd check` refusing a bad certificate path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate for `names` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes the server's certificate files into `dir`.
fn write_server_cert(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = leaf(ca, &["localhost"]);
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn client(ca: &Ca, addr: std::net::SocketAddr) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(5))
}

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

#[tokio::test]
async fn http1_and_http2_are_served_over_tls_by_alpn() {
    let ca = ca("test ca");
    let dir = common::scratch("tls-alpn");
    let (cert, key) = write_server_cert(&dir, &ca);
    let app = common::spawn_app(
        "tls-alpn",
        &[
            ("BUCKETD__SERVER__TLS__CERT", cert.display().to_string()),
            ("BUCKETD__SERVER__TLS__KEY", key.display().to_string()),
        ],
    )
    .await;
    let h2 = client(&ca, app.addr).build().unwrap();
    let r = h2.get(url(app.addr, "/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picked h2");
    let h1 = client(&ca, app.addr).http1_only().build().unwrap();
    let r = h1.get(url(app.addr, "/v1/config")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_11,
        "ALPN picked http/1.1"
    );
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", app.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got {plain:?}");
    app.stop().await;
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let dir = common::scratch("tls-mtls");
    let (cert, key) = write_server_cert(&dir, &server_ca);
    let ca_file = dir.join("clients.pem");
    std::fs::write(&ca_file, client_ca.cert.pem()).unwrap();
    let app = common::spawn_app(
        "tls-mtls",
        &[
            ("BUCKETD__SERVER__TLS__CERT", cert.display().to_string()),
            ("BUCKETD__SERVER__TLS__KEY", key.display().to_string()),
            (
                "BUCKETD__SERVER__TLS__CLIENT_CA",
                ca_file.display().to_string(),
            ),
        ],
    )
    .await;
    let anonymous = client(&server_ca, app.addr).build().unwrap();
    let refused = anonymous.get(url(app.addr, "/health")).send().await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");

    let (c, k) = leaf(&client_ca, &["client"]);
    let identity = reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap();
    let known = client(&server_ca, app.addr)
        .identity(identity)
        .build()
        .unwrap();
    let r = known.get(url(app.addr, "/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A certificate from another CA is refused too.
    let (c, k) = leaf(&server_ca, &["client"]);
    let identity = reqwest::Identity::from_pem(format!("{c}{k}").as_bytes()).unwrap();
    let stranger = client(&server_ca, app.addr)
        .identity(identity)
        .build()
        .unwrap();
    assert!(stranger.get(url(app.addr, "/health")).send().await.is_err());
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed_by_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = ca("test ca");
    let dir = common::scratch("tls-deadline");
    let (cert, key) = write_server_cert(&dir, &ca);
    let app = common::spawn_app(
        "tls-deadline",
        &[
            ("BUCKETD__SERVER__TLS__CERT", cert.display().to_string()),
            ("BUCKETD__SERVER__TLS__KEY", key.display().to_string()),
            ("BUCKETD__SERVER__HEADER_READ_TIMEOUT", "1s".into()),
        ],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closes the connection: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    app.stop().await;
}

/// A free local port (bound, then released for the daemon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_the_listener() {
    let old_ca = ca("old ca");
    let new_ca = ca("new ca");
    let dir = common::scratch("tls-reload");
    let (cert, key) = write_server_cert(&dir, &old_ca);
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bucketd"))
        .arg("serve")
        .current_dir(&dir)
        .env("BUCKETD__STATE_DIR", dir.join("state"))
        .env("BUCKETD__SERVER__LISTEN", addr.to_string())
        .env("BUCKETD__SERVER__TLS__CERT", &cert)
        .env("BUCKETD__SERVER__TLS__KEY", &key)
        .env("BUCKETD__FLUSHER__ENABLED", "false")
        .env("BUCKETD__EVENTS__ENDPOINT", "http://127.0.0.1:9/v1/events")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let trusts_old = client(&old_ca, addr).build().unwrap();
    let trusts_new = client(&new_ca, addr).build().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if trusts_old.get(url(addr, "/health")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "the daemon serves TLS");
    assert!(trusts_new.get(url(addr, "/health")).send().await.is_err());

    // Replace the files, then SIGHUP.
    write_server_cert(&dir, &new_ca);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reloaded = false;
    for _ in 0..50 {
        // A fresh client each time: a pooled connection would keep the old session.
        let fresh = client(&new_ca, addr).build().unwrap();
        if fresh.get(url(addr, "/health")).send().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_refused = client(&old_ca, addr)
        .build()
        .unwrap()
        .get(url(addr, "/health"))
        .send()
        .await
        .is_err();
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reloaded, "the new certificate is served after SIGHUP");
    assert!(old_refused, "the old certificate is no longer served");
    assert!(still_running, "the daemon kept running");
}

#[test]
fn check_refuses_a_missing_certificate_with_exit_64() {
    let dir = common::scratch("tls-check");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bucketd"))
        .arg("check")
        .current_dir(&dir)
        .env("BUCKETD__SERVER__TLS__CERT", dir.join("missing.pem"))
        .env("BUCKETD__SERVER__TLS__KEY", dir.join("missing-key.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("server.tls.cert") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
