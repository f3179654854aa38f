//! Destination storms the fakes share (re-exported from `leadpipe_consumer::testing`, where
//! the fakes in the destinations' own folders find them too) and a TCP hop that resets
//! connections.

use std::time::Duration;

pub use leadpipe_consumer::testing::{Storm, Strike, endure, weather};

/// A TCP hop in front of a fake that resets connections: every `every`-th new connection is
/// reset (RST) as soon as its first request bytes arrive, which never reach the fake. Every
/// other connection carries requests until its answer has been followed by 5 ms of
/// silence, then is closed, so the caller keeps opening new ones and keeps meeting resets.
pub struct ResettingProxy {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Connections reset so far.
    pub resets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResettingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The state of one passing connection, shared by its two directions and its watcher.
#[derive(Default)]
struct Exchange {
    /// Request bytes went up since the last answer bytes came down.
    busy: bool,
    /// Answer bytes came down at least once.
    answered: bool,
    /// When the last answer bytes came down.
    last_answer: Option<std::time::Instant>,
    /// The watcher decided to close: nothing more goes up.
    closing: bool,
}

impl ResettingProxy {
    /// Starts a proxy to `target` resetting every `every`-th connection.
    pub async fn start(target: std::net::SocketAddr, every: usize) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = resets.clone();
        let task = tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                accepted += 1;
                if accepted.is_multiple_of(every.max(1)) {
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        if inbound.peek(&mut first).await.is_ok() {
                            let _ = inbound.set_zero_linger();
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(inbound);
                    });
                    continue;
                }
                tokio::spawn(pass(inbound, target));
            }
        });
        Self { addr, resets, task }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Carries one connection until its last answer has had 5 ms of silence.
async fn pass(inbound: tokio::net::TcpStream, target: std::net::SocketAddr) {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = inbound.into_split();
    let (mut server_read, mut server_write) = outbound.into_split();
    let state = Arc::new(Mutex::new(Exchange::default()));
    let up_state = state.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            {
                let mut s = up_state.lock().unwrap();
                if s.closing {
                    return;
                }
                s.busy = true;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down_state = state.clone();
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            {
                let mut s = down_state.lock().unwrap();
                s.busy = false;
                s.answered = true;
                s.last_answer = Some(std::time::Instant::now());
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let watch = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut s = state.lock().unwrap();
            let quiet = s
                .last_answer
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(5));
            if s.answered && !s.busy && quiet {
                s.closing = true;
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = watch => {}
    }
}
