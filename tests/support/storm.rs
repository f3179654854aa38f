//! Destination storms the fakes share: every `n`-th request to a destination's data endpoint
//! is struck — 503, 429 with `Retry-After`, or no answer until the caller gives up. A struck
//! request is never processed, so what the fake keeps is what the destination would keep.

use std::time::Duration;

/// What a struck request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// `503 Service Unavailable`.
    Unavailable,
    /// `429 Too Many Requests` with `Retry-After: <secs>`.
    RateLimited {
        /// The `Retry-After` value, in seconds.
        retry_after_secs: u64,
    },
    /// No answer for this long (a caller's timeout fires first), then 503.
    Hang(Duration),
}

/// A fake's storm setting and its request counter.
#[derive(Debug, Default)]
pub struct Storm {
    every: u32,
    count: u32,
    strike: Option<Strike>,
}

impl Storm {
    /// Strikes every `every`-th request (0: calm) with `strike`.
    pub fn set(&mut self, every: u32, strike: Strike) {
        self.every = every;
        self.strike = Some(strike);
    }

    /// Counts a request; whether it is struck, and how.
    pub fn count(&mut self) -> Option<Strike> {
        if self.every == 0 {
            return None;
        }
        self.count += 1;
        if self.count.is_multiple_of(self.every) {
            self.strike
        } else {
            None
        }
    }
}

/// Lives through `strike` (a hang sleeps) and returns the status and `Retry-After` (seconds)
/// to answer with.
pub async fn endure(strike: Strike) -> (u16, Option<u64>) {
    match strike {
        Strike::Unavailable => (503, None),
        Strike::RateLimited { retry_after_secs } => (429, Some(retry_after_secs)),
        Strike::Hang(d) => {
            tokio::time::sleep(d).await;
            (503, None)
        }
    }
}

/// [`endure`] of the struck request, if it is.
pub async fn weather(strike: Option<Strike>) -> Option<(u16, Option<u64>)> {
    match strike {
        Some(s) => Some(endure(s).await),
        None => None,
    }
}

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
