//! The HTTP baseline for `benches/http_load.sh`: a bare hyper 1 server on the same runtime
//! settings as bucketd, answering every request with a fixed bucketer-shaped JSON body. The
//! ratio of bucketd's throughput to this one's is the cost of everything bucketd does.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};

const BODY: &[u8] = br#"{"experiment_key":"checkout_flow_experiment","user_id":"user-1","variation_key":"variation_a"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare hyper baseline on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
