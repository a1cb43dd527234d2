//! A TCP fault proxy between the nodes and PostgreSQL: passes bytes through, or adds
//! latency, throttles bandwidth, refuses new connections, or resets every open one
//! (what a database restart or a failover looks like from a node).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Each chunk waits this long before it is forwarded.
    Latency(Duration),
    /// New connections are reset at once (open ones carry on).
    Refuse,
    /// Each direction of each connection at most this many bytes per second.
    Bandwidth(u64),
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    /// Bumped to reset every open connection.
    generation: watch::Sender<u64>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; dropping it stops accepting (open connections are reset).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            generation,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    if s.mode() == Mode::Refuse {
                        reset(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        reset(client);
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pump_pair(client, server, s).await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Resets every open connection (new ones are accepted as the mode says).
    pub fn reset_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset".
fn reset(stream: TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn pump_pair(client: TcpStream, server: TcpStream, s: Arc<Shared>) {
    let mut gen = s.generation.subscribe();
    gen.mark_unchanged();
    // Linger 0: when the pair is dropped on a reset, both peers see RST.
    #[allow(deprecated)]
    let _ = (
        client.set_linger(Some(Duration::ZERO)),
        server.set_linger(Some(Duration::ZERO)),
    );
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, s.clone());
    let down = pump(sr, cw, s);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = gen.changed() => {}
    }
}

/// Copies `from` to `to` under the current mode, until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    s: Arc<Shared>,
) -> Option<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.ok()?;
        if n == 0 {
            let _ = to.shutdown().await;
            return None;
        }
        match s.mode() {
            Mode::Latency(d) => tokio::time::sleep(d).await,
            Mode::Bandwidth(bps) => {
                let secs = n as f64 / bps.max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            Mode::Pass | Mode::Refuse => {}
        }
        to.write_all(&buf[..n]).await.ok()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Instant;

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = c.read(&mut b).await {
                        if n == 0 || c.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(c: &mut TcpStream) -> std::io::Result<()> {
        c.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await?;
        assert_eq!(&b, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn passes_delays_refuses_and_resets() {
        let p = FaultProxy::start(echo().await).await.unwrap();
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut c).await.unwrap();

        p.set(Mode::Latency(Duration::from_millis(100)));
        let t = Instant::now();
        round_trip(&mut c).await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "both directions delayed"
        );

        p.set(Mode::Pass);
        p.reset_all();
        let mut b = [0u8; 4];
        let r = c.write_all(b"ping").await;
        let r2 = c.read(&mut b).await;
        assert!(
            r.is_err() || !matches!(r2, Ok(4)),
            "an open connection is cut"
        );

        p.set(Mode::Refuse);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        assert!(
            round_trip(&mut c).await.is_err(),
            "a new connection is refused"
        );

        p.set(Mode::Pass);
        let mut c = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut c).await.unwrap();
    }
}
