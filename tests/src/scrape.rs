//! Reads a node's Prometheus metrics the way Prometheus does: an HTTP GET of /metrics, then the
//! text exposition parsed into series and values.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A scrape's samples: `name{labels}` exactly as exposed (e.g.
/// `paxos_peer_connected{peer="2"}`) -> value; and the metric families' types.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: BTreeMap<String, f64>,
    /// Family name -> type (`counter`, `gauge`, `histogram`), from the `# TYPE` lines.
    pub types: BTreeMap<String, String>,
    pub text: String,
}

impl Scrape {
    /// The value of one series; an error naming it (and what the scrape holds) if it is absent.
    pub fn value(&self, series: &str) -> anyhow::Result<f64> {
        self.samples
            .get(series)
            .copied()
            .with_context(|| format!("no series {series} in the scrape:\n{}", self.text))
    }

    /// The value of one series, or 0 if absent (a counter with labels appears at its first
    /// increment).
    pub fn value_or_zero(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// GET http://ADDR/metrics, with a deadline.
pub async fn scrape(addr: &str) -> anyhow::Result<Scrape> {
    let text = tokio::time::timeout(Duration::from_secs(5), get(addr, "/metrics"))
        .await
        .with_context(|| format!("scraping {addr}: timed out"))??;
    parse(&text)
}

/// The body of a GET (HTTP/1.1, `Connection: close`); an error unless the status is 200.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response).context("the response is not UTF-8")?;
    let (head, body) = response.split_once("\r\n\r\n").context("no end of headers in the response")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("GET {path} from {addr}: {status}");
    }
    if head.lines().any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked")) {
        bail!("GET {path} from {addr}: a chunked body (the node sends a length)");
    }
    Ok(body.to_owned())
}

/// Parses the text exposition; fails on a line that is neither a comment nor `SERIES VALUE`.
pub fn parse(text: &str) -> anyhow::Result<Scrape> {
    let mut scrape = Scrape { text: text.to_owned(), ..Scrape::default() };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').with_context(|| format!("bad TYPE line {line:?}"))?;
            scrape.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("bad sample line {line:?}"))?;
        let value: f64 = value.parse().with_context(|| format!("bad value in {line:?}"))?;
        scrape.samples.insert(series.to_owned(), value);
    }
    if !text.trim_end().ends_with("# EOF") {
        bail!("the exposition does not end with # EOF");
    }
    Ok(scrape)
}
