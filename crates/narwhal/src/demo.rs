//! `narwhal demo`: a synthetic campaign in the embedded database, then serve it.

use crate::config::{open_store, Settings};
use crate::serve::{serve_store, ServeArgs};
use indicatif::{ProgressBar, ProgressStyle};
use narwhal_domain::{Role, SegmentFilter};
use narwhal_people::import::{self, ImportOptions};
use narwhal_people::mapping::Mapping;
use narwhal_people::{synth, Hub};
use serde_json::json;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// How many people (up to 10,000,000).
    #[arg(long, default_value_t = 100_000)]
    pub people: u64,
    /// The generator's seed: the same seed gives the same campaign.
    #[arg(long, default_value_t = 2012)]
    pub seed: u64,
    /// Build the campaign, then exit instead of serving.
    #[arg(long)]
    pub no_serve: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

const DEMO_USER: &str = "demo-admin";

pub async fn run(settings: &Settings, args: DemoArgs) -> anyhow::Result<()> {
    if args.people == 0 || args.people > 10_000_000 {
        anyhow::bail!("--people: between 1 and 10,000,000");
    }
    let store = open_store(settings).await?;
    if store.count_people().await? == 0 {
        std::fs::create_dir_all(&settings.data_dir)?;
        let file = settings.data_dir.join("demo-voter-file.csv");
        let bar = ProgressBar::new(args.people);
        bar.set_style(
            ProgressStyle::with_template("generating {bar:40} {pos}/{len} rows")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        synth::write_csv(&file, args.seed, args.people, &|i| bar.set_position(i))?;
        bar.finish_and_clear();
        let mapping =
            Mapping::parse(synth::MAPPING).map_err(|e| anyhow::anyhow!("built-in mapping: {e}"))?;
        let total = std::fs::metadata(&file)?.len();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "importing {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let id = store
            .create_import(
                &mapping.source.name,
                &file.display().to_string(),
                synth::MAPPING,
                "demo",
                false,
            )
            .await?;
        let hub = Hub::new(store.clone());
        let opts = ImportOptions::beside(&file);
        let c = import::run(&hub, &file, &mapping, &opts, "demo", &|c| {
            bar.set_position(c.bytes_read as u64);
            bar.set_message(format!("{} people", c.rows_read));
        })
        .await?;
        bar.finish_and_clear();
        store
            .update_import(
                id,
                "done",
                &c,
                Some(&opts.rejects_path.display().to_string()),
                None,
            )
            .await?;
        for (name, f) in [
            (
                "Email subscribers",
                json!({"consent":{"channel":"email","state":"subscribed"}}),
            ),
            ("Donors", json!({"tag":"donor"})),
            ("Volunteers", json!({"tag":"volunteer"})),
            (
                "Franklin County GOTV",
                json!({"all":[{"county":"FRANKLIN"},{"not":{"field":{"key":"party","op":"eq","value":"R"}}}]}),
            ),
        ] {
            let f = SegmentFilter::parse(&f).map_err(|e| anyhow::anyhow!("{e}"))?;
            let _ = store.create_segment(name, &f).await;
        }
        let list = store
            .create_list(
                "Precinct captains",
                "Hand-picked volunteers who run a precinct",
                "demo",
            )
            .await?;
        let first: Vec<_> = store
            .search_people("", None, 25)
            .await?
            .into_iter()
            .map(|p| p.id)
            .collect();
        store.add_to_list(list, &first, "demo").await?;
        println!(
            "created {} people ({} rejected) in {}",
            c.inserted,
            c.rejected,
            settings.database.redacted()
        );
    }
    // A fresh password on every start, printed for the person running the demo.
    let password = narwhal_http::auth::new_token().0[..16].to_string();
    let hash = narwhal_http::auth::hash_password(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    if store.user_by_name(DEMO_USER).await?.is_some() {
        store.set_password(DEMO_USER, &hash).await?;
    } else {
        store.create_user(DEMO_USER, &hash, Role::Admin).await?;
    }
    let banner = format!("Staff login: {DEMO_USER} / {password}");
    if args.no_serve {
        println!("{banner}");
        return Ok(());
    }
    // Without a processor configured, the demo takes donations through the project's
    // fake Stripe on loopback, so the page and the API work without a vendor account.
    let mut settings = settings.clone();
    let _fake_stripe = if settings.donations.processors.is_empty() {
        let fake = narwhal_fakes::stripe::FakeStripe::start(Default::default()).await?;
        let key = narwhal_fakes::stripe::DEFAULT_KEY;
        std::env::set_var(DEMO_STRIPE_KEY_ENV, key);
        settings
            .donations
            .processors
            .push(crate::donations_setup::ProcessorSettings {
                name: "demo-stripe".into(),
                kind: "stripe".into(),
                api_base: Some(fake.url()),
                secret_key_env: DEMO_STRIPE_KEY_ENV.into(),
                publishable_key: Some(key.replacen("sk_", "pk_", 1)),
                webhook_secret_env: None,
                max_rps: None,
                timeout_ms: None,
            });
        println!(
            "Donations go to a fake Stripe at {} (test card 4242 4242 4242 4242; no money moves)",
            fake.url()
        );
        Some(fake)
    } else {
        None
    };
    serve_store(&settings, store, &args.serve, Some(banner)).await
}

/// The variable the demo's fake Stripe key is read from.
const DEMO_STRIPE_KEY_ENV: &str = "NARWHAL_DEMO_STRIPE_SECRET_KEY";
