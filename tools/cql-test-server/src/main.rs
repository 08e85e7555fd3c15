//! `cql-test-server`: an in-memory CQL (protocol v4) server for bucketd's Cassandra backend tests.
//!
//! It wraps the `kassandra` engine (an emulator, not Cassandra: no TTL expiry, no lightweight
//! transactions) in a tokio TCP server, and owns two fixes the engine lacks:
//! - PREPARE answers list a column spec for every WHERE / VALUES entry, literal or `?`; drivers
//!   then expect values for literals too (the scylla driver's own `system.local` query breaks).
//!   We drop the specs of literals and renumber the partition-key indexes.
//! - The engine panics on what it does not implement, while handling a request or encoding its
//!   answer; such a panic answers that one request with a server error instead of killing the
//!   connection (the shared state stays usable).
//!
//! Usage: `cql-test-server [--listen 127.0.0.1:9042]`. Logs go to stderr; `RUST_LOG` filters
//! them (default `warn,kassandra=off`: the engine logs every failed query as an ERROR, including
//! the drivers' probes of system tables it lacks; `RUST_LOG=debug` shows them with ours).

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use kassandra::cql::query::{QueryString, QueryValue};
use kassandra::error::DbError;
use kassandra::frame::request::{Request, RequestOpcode};
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::result::{PreparedMetadata, QueryResult};
use kassandra::frame::response::{Response, ResponseOpcode};
use kassandra::frame::{
    raw_response_sink, request_stream, FrameFlags, FrameParams, ProtocolVersion,
};
use kassandra::KassandraSession;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};

const DEFAULT_LISTEN: &str = "127.0.0.1:9042";
const USAGE: &str = "usage: cql-test-server [--listen HOST:PORT]   (default 127.0.0.1:9042)";

/// All connections share one database, as clients of one node do.
type Db = Arc<Mutex<KassandraSession>>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kassandra=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Engine panics are expected (unsupported features) and answered; one line each is enough.
    std::panic::set_hook(Box::new(
        |info| tracing::warn!(%info, "panic; answering a server error"),
    ));
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(addr) => addr,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cql-test-server: cannot listen on {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("cql-test-server: listening on {addr}");
    let db: Db = Arc::new(Mutex::new(KassandraSession::new()));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "client connected");
                    tokio::spawn(serve(db.clone(), stream));
                }
                Err(error) => tracing::warn!(%error, "accept failed"),
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" | "-l" => listen = args.next().ok_or("--listen needs an address")?,
            "--help" | "-h" => return Err("an in-memory CQL v4 server for tests".to_owned()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("bad --listen address `{listen}`: {e}"))
}

/// Answers one connection's frames in order until it closes.
async fn serve(db: Db, mut stream: TcpStream) {
    let (read, write) = stream.split();
    let mut requests = request_stream(read);
    let mut responses = raw_response_sink(write);
    // The engine keeps one current keyspace; each connection gets its own `USE` back.
    let mut keyspace: Option<String> = None;
    while let Some(frame) = requests.next().await {
        let (params, opcode, body) = match frame {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(%error, "bad frame; closing connection");
                break;
            }
        };
        let (response_opcode, response_body) = if params.version.is_unsupported() {
            encode_error(Response::unsupported_version())
        } else {
            // Handling and encoding both panic on what the engine lacks (e.g. counter columns).
            catch_unwind(AssertUnwindSafe(|| {
                let response = handle(&db, &mut keyspace, opcode, &body, params.flags);
                if let Response::Error(error) = &response {
                    tracing::debug!(?opcode, ?error, "request failed");
                }
                encode(&response)
            }))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(format!("not supported by the test server: {message}"))
            })
            .unwrap_or_else(|message| {
                encode_error(Response::Error(CqlError::new(
                    DbError::ServerError,
                    message,
                )))
            })
        };
        let header = FrameParams {
            version: ProtocolVersion::V4,
            flags: FrameFlags::empty(),
            stream: params.stream,
        };
        if let Err(error) = responses
            .send((header, response_opcode, response_body))
            .await
        {
            tracing::debug!(%error, "write failed; closing connection");
            break;
        }
    }
}

/// A response's opcode and body.
fn encode(response: &Response) -> Result<(ResponseOpcode, Bytes), String> {
    let mut body = BytesMut::new();
    response
        .serialize(&mut body, &mut FrameFlags::empty())
        .map_err(|e| e.to_string())?;
    let opcode = ResponseOpcode::try_from(response.opcode()).map_err(|e| e.to_string())?;
    Ok((opcode, body.freeze()))
}

/// Encodes an ERROR response, which cannot fail.
fn encode_error(response: Response) -> (ResponseOpcode, Bytes) {
    encode(&response).unwrap_or((ResponseOpcode::Error, Bytes::new()))
}

fn handle(
    db: &Db,
    keyspace: &mut Option<String>,
    opcode: RequestOpcode,
    body: &[u8],
    flags: FrameFlags,
) -> Response {
    let request = match Request::deserialize(opcode, body, flags) {
        Ok(request) => request,
        Err(error) => return Response::Error(error),
    };
    // A panic while locked poisons the mutex; the engine's state is still usable for tests.
    let mut kass = db.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ks) = keyspace.as_ref() {
        kass.use_keyspace(ks.clone());
    }
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::AuthResponse => {
            return Response::Error(CqlError::new(DbError::ProtocolError, "no authentication"))
        }
        Request::Query(query) => kass.process(query),
        Request::Execute(execute) => kass.execute(execute),
        Request::Batch(batch) => kass.process_batch(batch),
        Request::Prepare(query) => {
            let markers = bind_markers(&query);
            kass.prepare(query).map(|mut result| {
                if let (QueryResult::Prepared(prepared), Some(markers)) = (&mut result, markers) {
                    keep_bind_markers_only(&mut prepared.prepared_metadata, &markers);
                }
                result
            })
        }
    };
    if let Ok(QueryResult::SetKeyspace(set)) = &result {
        *keyspace = Some(set.keyspace_name.clone());
    }
    result.map_or_else(Response::Error, Response::Result)
}

/// For each WHERE / VALUES entry of a preparable statement, whether it is a bind marker.
fn bind_markers(query: &QueryString) -> Option<Vec<bool>> {
    let is_marker = |value: &QueryValue| matches!(value, QueryValue::Blankslate);
    match query {
        QueryString::Select(select) => Some(
            select
                .r#where
                .statements
                .iter()
                .map(|(_, v)| is_marker(v))
                .collect(),
        ),
        QueryString::Delete(delete) => Some(
            delete
                .r#where
                .statements
                .iter()
                .map(|(_, v)| is_marker(v))
                .collect(),
        ),
        QueryString::Insert(insert) => Some(insert.values.iter().map(is_marker).collect()),
        _ => None,
    }
}

/// Drops the column specs of literal values and renumbers the partition-key indexes, so the
/// metadata describes exactly the values the client must bind.
fn keep_bind_markers_only(metadata: &mut PreparedMetadata, markers: &[bool]) {
    if metadata.col_specs.len() != markers.len() {
        return; // not the one-spec-per-entry shape this fix knows; leave it alone
    }
    let mut bound = 0u16;
    let new_index: Vec<Option<u16>> = markers
        .iter()
        .map(|&is_marker| {
            is_marker.then(|| {
                bound += 1;
                bound - 1
            })
        })
        .collect();
    let mut keep = markers.iter();
    metadata
        .col_specs
        .retain(|_| keep.next().copied().unwrap_or(true));
    metadata
        .pk_indexes
        .retain_mut(|pk| match new_index.get(usize::from(pk.index)) {
            Some(Some(index)) => {
                pk.index = *index;
                true
            }
            _ => false,
        });
}
