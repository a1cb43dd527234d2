//! `narwhal bench turnout --mode turnout-connections`: one node holding 10,000 watcher
//! clients, each on a keep-alive connection with its place's live stream.
//!
//! The clients run in a child process (`narwhal bench turnout-watchers`, hidden) so
//! that the server is measured as the node it would be: its own open files (one per
//! client) and its own peak memory. Client and server in one process need two
//! descriptors per client, which a 20,000 hard limit cannot give 10,000 clients.
//!
//! The parent and the child speak in lines over the child's stdin and stdout:
//! 1. the child connects every client and prints `{"up":..,"errors":..,"connect_s":..}`;
//! 2. the parent posts one report at the first place and writes how many clients
//!    must see it;
//! 3. the child prints `{"updates":..,"peak_rss_mb":..}` once that many updates arrived
//!    (or after 10 s) and exits.

use crate::bench_turnout::{codes, login, server, watchers, Bench};
use anyhow::{bail, Context};
use serde_json::json;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The client side of the connections mode, run by the bench in a child process.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchersArgs {
    /// The server's loopback address (host:port).
    #[arg(long)]
    pub addr: String,
    /// A file with one session cookie per line; client i uses line i modulo their number.
    #[arg(long)]
    pub cookies: std::path::PathBuf,
    /// How many watcher clients to connect.
    #[arg(long)]
    pub clients: usize,
}

/// Parent side: seeds 100 places, starts the server here and the clients in a child.
pub(crate) async fn run_connections(
    b: &Bench,
    clients: usize,
) -> anyhow::Result<serde_json::Value> {
    let name = b.backend.as_str();
    let limit = raise_nofile(clients as u64 + 512)?;
    eprintln!(
        "[{name}] turnout-connections: {clients} watcher clients in a child process (server open-file limit {limit})..."
    );
    let places = b.store.bench_seed_universe(10_000, 100).await?;
    let tokens = watchers(&b.store, &places).await?;
    let upload = tempfile::tempdir()?;
    let (addr, stop) = server(&b.store, upload.path()).await?;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let mut cookies = Vec::new();
    for t in &tokens {
        cookies.push(login(&http, &base, t).await?);
    }
    let cookie_file = upload.path().join("cookies.txt");
    std::fs::write(&cookie_file, cookies.join("\n"))?;
    let exe = std::env::current_exe().context("locating the narwhal binary")?;
    let mut child = std::process::Command::new(exe)
        .args(["bench", "turnout-watchers", "--addr", &addr, "--clients"])
        .arg(clients.to_string())
        .arg("--cookies")
        .arg(&cookie_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("starting the watcher clients' process")?;
    let mut to_child = child.stdin.take().context("child stdin")?;
    let from_child = child.stdout.take().context("child stdout")?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<serde_json::Value>(4);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from_child).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                if lines_tx.blocking_send(v).is_err() {
                    break;
                }
            }
        }
    });
    let result = async {
        let connected = tokio::time::timeout(Duration::from_secs(180), lines.recv())
            .await
            .context("the watcher clients did not connect within 180 s")?
            .context("the watcher clients' process ended before connecting")?;
        let up = connected["up"].as_u64().unwrap_or(0);
        let mut errors = connected["errors"].as_u64().unwrap_or(0);
        // One report at the first place: each of its clients must see it.
        let place0 = (0..clients).filter(|i| i % cookies.len() == 0).count() as u64;
        let codes0 = codes(&b.store, &places[0]).await?;
        let t = Instant::now();
        let r = http
            .post(format!("{base}/api/v1/turnout/reports"))
            .header("cookie", &cookies[0])
            .json(&json!({"reports": [{"report_id": "conn-1", "voter_code": codes0[0]}]}))
            .send()
            .await?;
        if r.status() != 200 {
            errors += 1;
        }
        writeln!(to_child, "{place0}")?;
        to_child.flush()?;
        let done = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .context("the watcher clients did not answer after the report")?
            .context("the watcher clients' process ended early")?;
        let update_ms = t.elapsed().as_secs_f64() * 1000.0;
        let updates = done["updates"].as_u64().unwrap_or(0);
        Ok::<_, anyhow::Error>(json!({
            "bench": "turnout-connections",
            "backend": b.backend.as_str(),
            "clients": up,
            "peak_rss_mb": crate::bench::peak_rss_mb(),
            "clients_peak_rss_mb": done["peak_rss_mb"],
            "errors": errors + place0.saturating_sub(updates),
            "connect_s": connected["connect_s"],
            "update_all_ms": update_ms.round(),
            "clients_of_updated_place": place0,
        }))
    }
    .await;
    drop(to_child);
    let _ = child.kill();
    let _ = child.wait();
    let _ = stop.send(());
    result
}

/// Child side: connects the clients, reports, waits for the parent's count, reports.
pub async fn run_watchers(args: WatchersArgs) -> anyhow::Result<()> {
    raise_nofile(args.clients as u64 + 256)?;
    let cookies: Vec<String> = std::fs::read_to_string(&args.cookies)
        .with_context(|| format!("reading {}", args.cookies.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if cookies.is_empty() {
        bail!("{}: no session cookies", args.cookies.display());
    }
    let clients = args.clients;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(clients.max(1));
    let updates = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        handles.push(tokio::spawn(watcher_client(
            args.addr.clone(),
            cookies[i % cookies.len()].clone(),
            tx.clone(),
            updates.clone(),
        )));
        // Connect in waves so the listen backlog never overflows.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(tx);
    let (mut up, mut errors) = (0u64, 0u64);
    while up + errors < clients as u64 {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(true)) => up += 1,
            Ok(Some(false)) => errors += 1,
            _ => {
                errors = clients as u64 - up;
                break;
            }
        }
    }
    let connect_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({"up": up, "errors": errors, "connect_s": connect_s})
    );
    let want: u64 = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok();
        line.trim().parse().unwrap_or(0)
    })
    .await?;
    let t = Instant::now();
    while updates.load(Ordering::Relaxed) < want && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{}",
        json!({"updates": updates.load(Ordering::Relaxed), "peak_rss_mb": crate::bench::peak_rss_mb()})
    );
    for h in handles {
        h.abort();
    }
    Ok(())
}

/// Raises the open-file limit to `want` if it is lower (root may raise the hard one).
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let target = if hard >= want { want } else { want.max(hard) };
    let lim = Rlimit {
        current: Some(target),
        maximum: Some(hard.max(target)),
    };
    if setrlimit(Resource::Nofile, lim).is_err() {
        let lim = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        setrlimit(Resource::Nofile, lim).ok();
        let now = getrlimit(Resource::Nofile).current.unwrap_or(0);
        if now < want {
            bail!("{want} open files are needed and the limit is {now}: run `ulimit -n {want}` first (or as root)");
        }
        return Ok(now);
    }
    Ok(target)
}

/// One watcher client: a keep-alive connection that reads its readiness, then holds
/// its place's live stream on the same connection. Sends `true` once it sees the
/// first event, and counts the events after.
async fn watcher_client(
    addr: String,
    cookie: String,
    connected: tokio::sync::mpsc::Sender<bool>,
    updates: Arc<AtomicU64>,
) {
    let fail = |c: tokio::sync::mpsc::Sender<bool>| async move {
        let _ = c.send(false).await;
    };
    let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
        return fail(connected).await;
    };
    let mut s = BufReader::new(tcp);
    let req =
        format!("GET /api/v1/turnout/me HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n");
    if s.get_mut().write_all(req.as_bytes()).await.is_err() {
        return fail(connected).await;
    }
    // Status line and headers, then exactly Content-Length bytes: the connection stays.
    let mut line = String::new();
    let mut len = 0usize;
    let mut ok = false;
    loop {
        line.clear();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return fail(connected).await;
        }
        if line.starts_with("HTTP/1.1 200") {
            ok = true;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    if !ok || s.read_exact(&mut body).await.is_err() {
        return fail(connected).await;
    }
    let req =
        format!("GET /api/v1/turnout/me/live HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n");
    if s.get_mut().write_all(req.as_bytes()).await.is_err() {
        return fail(connected).await;
    }
    let mut first = true;
    loop {
        line.clear();
        match s.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                if first {
                    fail(connected.clone()).await;
                }
                return;
            }
            Ok(_) => {}
        }
        if line.contains("\"remaining\"") {
            if first {
                first = false;
                let _ = connected.send(true).await;
            } else {
                updates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
