//! Reading a binary's `/metrics`: a minimal HTTP GET and sums of Prometheus text samples.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.0 GET; the body, or an error for a failed connection or a non-200 answer.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no complete answer within 10s"))??;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        return Err(std::io::Error::other(format!("HTTP error: {head}")));
    }
    Ok(body.to_owned())
}

/// The sum of every sample of counter `name` in Prometheus text.
pub fn sum_counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(_, v)| {
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample value {v:?} of {name}")) as u64
        })
        .sum()
}

/// Samples of counter `name` in Prometheus text, summed per value of `label`.
pub fn counter_by_label(metrics: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut sums = BTreeMap::new();
    let key = format!("{label}=\"");
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(label_value) = labels
            .split_once(&key)
            .and_then(|(_, v)| v.split_once('"'))
            .map(|(v, _)| v.to_owned())
        else {
            continue;
        };
        let value = value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value {value:?} of {name}"));
        *sums.entry(label_value).or_insert(0) += value as u64;
    }
    sums
}
