//! The extender on the real server (`topolvm_runtime::http`) on a loopback socket: plain HTTP,
//! HTTPS, and graceful shutdown.
//!
//! The certificate in `tests/fixtures/tls` (CA and a server certificate for localhost and
//! 127.0.0.1, valid for 100 years) was made with openssl for these tests only.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::plain_state;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use topolvm_runtime::{http, tls};
use topolvm_scheduler::app;
use topolvm_scheduler::config::{Config, TlsFiles};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// Sends one HTTP/1.1 request and reads the whole response (the server closes after it).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    String::from_utf8(response).expect("utf-8")
}

const STATUS: &str = "GET /status HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn plain_http_and_graceful_shutdown() {
    let listener = http::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        None,
        app(plain_state(&Config::default())),
        shutdown.clone(),
    ));

    let response = exchange(TcpStream::connect(addr).await.expect("connect"), STATUS).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");

    let body = r#"{"Pod":{},"NodeNames":["a"]}"#;
    let request = format!(
        "POST /predicate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = exchange(TcpStream::connect(addr).await.expect("connect"), &request).await;
    assert!(response.contains(r#""NodeNames":["a"]"#), "{response}");

    // An answer that echoes nodes goes out in several chunks, with an exact Content-Length.
    let nodes = r#"{"Pod":{"metadata":{"annotations":{"capacity.topolvm.io/a":"5"}}},"Nodes":{"items":[{"metadata":{"name":"n1","annotations":{"capacity.topolvm.io/a":"9"}}},{"metadata":{"name":"n2"}},{"metadata":{"name":"n3","annotations":{"capacity.topolvm.io/a":"9"}}}]}}"#;
    let request = format!(
        "POST /predicate HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{nodes}",
        nodes.len()
    );
    let response = exchange(TcpStream::connect(addr).await.expect("connect"), &request).await;
    let (head, answer) = response.split_once("\r\n\r\n").expect("head and body");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", answer.len())),
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(answer).expect("JSON answer");
    assert_eq!(answer["Nodes"]["items"][1]["metadata"]["name"], "n3");
    assert_eq!(answer["FailedNodes"]["n2"], "no capacity annotation");

    // A request in flight when shutdown starts is still answered.
    let mut in_flight = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /predicate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.expect("head");
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = exchange(in_flight, body).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("served");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn https_with_the_configured_certificate() {
    let tls = tls::acceptor(&TlsFiles {
        cert_file: fixture("server.pem"),
        key_file: fixture("server.key"),
    })
    .expect("acceptor");
    let listener = http::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        Some(tls),
        app(plain_state(&Config::default())),
        shutdown.clone(),
    ));

    let connector = topolvm_test_kit::pki::tls_connector(&fixture("ca.pem"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let response = exchange(stream, STATUS).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    // Plain HTTP on the TLS port gets no answer.
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        exchange(TcpStream::connect(addr).await.expect("connect"), STATUS),
    )
    .await
    .expect("closed promptly");
    assert!(!response.contains("200 OK"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops promptly")
        .expect("task")
        .expect("served");
}
