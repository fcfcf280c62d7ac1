//! A small TCP proxy for one directed peer link (node A's connections to node B), which a test
//! can cut (partition), heal, or slow down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct LinkState {
    cut: AtomicBool,
    /// Swallow every byte while keeping connections open: a silent partition, no reset.
    drop: AtomicBool,
    delay_ms: AtomicU64,
}

/// Handle to a running proxy. Dropping it stops the proxy.
#[derive(Debug)]
pub struct Proxy {
    pub addr: String,
    state: Arc<LinkState>,
    /// Bumped on every cut, so live connections close at once.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `target`.
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(LinkState::default());
        let (generation, _) = watch::channel(0u64);
        let task_state = state.clone();
        let task_generation = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if task_state.cut.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let state = task_state.clone();
                let target = target.clone();
                let cut_signal = task_generation.subscribe();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        pipe(inbound, outbound, state, cut_signal).await;
                    }
                });
            }
        });
        Ok(Proxy { addr, state, generation, task })
    }

    /// Drops every connection and refuses new ones until `heal`.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.drop.store(false, Ordering::SeqCst);
    }

    /// Silently drops all traffic (both ways) until `heal`; connections stay open.
    pub fn drop_traffic(&self) {
        self.state.drop.store(true, Ordering::SeqCst);
    }

    /// Delays every chunk forwarded, in either direction, by this much.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn pipe(
    inbound: TcpStream,
    outbound: TcpStream,
    state: Arc<LinkState>,
    mut cut_signal: watch::Receiver<u64>,
) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = relay(in_read, out_write, state.clone()) => {}
        _ = relay(out_read, in_write, state) => {}
        _ = cut_signal.changed() => {}
    }
}

/// Copies one direction of a connection, applying the link's cut, drop and delay settings.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<LinkState>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await.unwrap_or(0);
        if n == 0 || state.cut.load(Ordering::SeqCst) {
            return;
        }
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if state.drop.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
