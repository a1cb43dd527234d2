//! `narwhal fake stripe|ses|smtp --listen ADDR`: the project's fakes as processes of
//! their own, for game days against a deployment on other machines' loopback or for
//! trying Narwhal by hand. Each runs until Ctrl-C. Faults are set over HTTP on the
//! fake Stripe (`POST /_fake/faults`); the fake SES and the SMTP sink run as
//! configured on the command line.

use anyhow::Context;
use narwhal_fakes::stripe::{FakeStripeConfig, DEFAULT_KEY};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum FakeCommand {
    /// A fake Stripe (PaymentIntents, refunds, a ledger, faults on command).
    Stripe {
        #[arg(long, default_value = "127.0.0.1:12111")]
        listen: SocketAddr,
        /// Milliseconds added to every API request.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// A fake Amazon SES v2 (SigV4 checked, rate limit, ledger).
    Ses {
        #[arg(long, default_value = "127.0.0.1:4579")]
        listen: SocketAddr,
        #[arg(long, default_value = "us-east-1")]
        region: String,
        #[arg(long, default_value = "AKIDFAKE")]
        access_key_id: String,
        /// The account's secret key (a fake's: not a real credential).
        #[arg(long, default_value = "fake-secret")]
        secret_access_key: String,
        /// Messages per second before throttling (0: unlimited).
        #[arg(long, default_value_t = 0)]
        rate: u32,
    },
    /// An SMTP sink that accepts everything.
    Smtp {
        #[arg(long, default_value = "127.0.0.1:2525")]
        listen: SocketAddr,
    },
}

pub async fn run(cmd: FakeCommand) -> anyhow::Result<()> {
    match cmd {
        FakeCommand::Stripe { listen, latency_ms } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!(
                "fake Stripe on http://{} (secret key {DEFAULT_KEY})",
                listener.local_addr()?
            );
            let config = FakeStripeConfig {
                latency: Duration::from_millis(latency_ms),
                ..FakeStripeConfig::default()
            };
            narwhal_fakes::stripe::run(config, listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        }
        FakeCommand::Ses {
            listen,
            region,
            access_key_id,
            secret_access_key,
            rate,
        } => {
            let mut account = narwhal_fakes::FakeAccount::new(&access_key_id, &secret_access_key);
            if rate > 0 {
                account = account.rate(rate);
            }
            let fake = narwhal_fakes::FakeSes::start(&region, vec![account]).await?;
            let addr = forward(listen, fake.addr()).await?;
            println!("fake SES on http://{addr} (region {region}, access key {access_key_id})");
            let _ = tokio::signal::ctrl_c().await;
            let s = fake.stats();
            println!(
                "accepted {} messages, throttled {}",
                s.accepted, s.throttled
            );
        }
        FakeCommand::Smtp { listen } => {
            let sink = narwhal_fakes::SmtpSink::start().await?;
            let addr = forward(listen, sink.addr()).await?;
            println!("SMTP sink on {addr}");
            let _ = tokio::signal::ctrl_c().await;
            println!("received {} messages", sink.message_count());
        }
    }
    Ok(())
}

/// Listens on `listen` and passes every connection through to `to` (the fakes
/// choose their own loopback port).
async fn forward(listen: SocketAddr, to: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Ok(addr)
}
