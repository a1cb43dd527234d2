#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The fake Stripe on the wire: keys, parameters, idempotency, lists, search, the
//! control endpoint, and signed webhooks (duplicates, order, retries).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, WebhookTarget, DEFAULT_KEY};
use narwhal_pay::stripe::webhook;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(narwhal_mail::tls::client_config(None).unwrap())
        .build()
        .unwrap()
}

async fn post_form(
    fake: &FakeStripe,
    path: &str,
    body: &str,
    key: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let mut req = http()
        .post(format!("{}{path}", fake.url()))
        .bearer_auth(DEFAULT_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap())
}

async fn get_json(fake: &FakeStripe, path: &str) -> (u16, Value) {
    let resp = http()
        .get(format!("{}{path}", fake.url()))
        .bearer_auth(DEFAULT_KEY)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn keys_by_bearer_or_basic_and_401_otherwise() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let url = format!("{}/v1/balance", fake.url());
    let basic = http()
        .get(&url)
        .basic_auth(DEFAULT_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let body: Value = basic.json().await.unwrap();
    assert_eq!(body["object"], "balance");
    let wrong = http()
        .get(&url)
        .bearer_auth("sk_test_nope_1234")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(!body["error"]["message"].as_str().unwrap().contains("nope"));
    let none = http().get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(fake.stats().unauthorized, 2);
}

#[tokio::test]
async fn parameters_are_checked_like_stripe() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let (s, _, b) = post_form(&fake, "/v1/payment_intents", "currency=usd", None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("parameter_missing"))
    );
    assert_eq!(b["error"]["param"], "amount");
    let (s, _, b) = post_form(
        &fake,
        "/v1/payment_intents",
        "amount=100&currency=usd&cvc=123",
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("parameter_unknown"))
    );
    let (s, _, b) = post_form(
        &fake,
        "/v1/payment_intents",
        "amount=1e3&currency=usd",
        None,
    )
    .await;
    assert_eq!((s, b["error"]["param"].as_str()), (400, Some("amount")));
    let (s, _, b) = post_form(&fake, "/v1/nothing", "", None).await;
    assert_eq!(
        (s, b["error"]["type"].as_str()),
        (404, Some("invalid_request_error"))
    );
}

#[tokio::test]
async fn intents_move_through_their_lifecycle() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let (s, _, pi) = post_form(
        &fake,
        "/v1/payment_intents",
        "amount=2000&currency=USD&metadata%5Bdonation%5D=d1",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(pi["status"], "requires_payment_method");
    assert_eq!(pi["currency"], "usd");
    assert_eq!(pi["metadata"]["donation"], "d1");
    let id = pi["id"].as_str().unwrap();
    // A decline sends the intent back to requires_payment_method, with the error.
    let (s, _, e) = post_form(
        &fake,
        &format!("/v1/payment_intents/{id}/confirm"),
        "payment_method=pm_card_chargeDeclinedInsufficientFunds",
        None,
    )
    .await;
    assert_eq!(s, 402);
    assert_eq!(e["error"]["type"], "card_error");
    assert_eq!(e["error"]["decline_code"], "insufficient_funds");
    assert_eq!(
        e["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
    assert!(e["error"]["charge"].as_str().unwrap().starts_with("ch_"));
    // Another card then succeeds.
    let (s, _, ok) = post_form(
        &fake,
        &format!("/v1/payment_intents/{id}/confirm"),
        "payment_method=pm_card_mastercard&expand[]=latest_charge",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(
        ok["latest_charge"]["payment_method_details"]["card"]["brand"],
        "mastercard"
    );
    // Confirming again is refused: it already succeeded.
    let (s, _, e) = post_form(
        &fake,
        &format!("/v1/payment_intents/{id}/confirm"),
        "",
        None,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("payment_intent_unexpected_state"))
    );
    let (s, got) = get_json(&fake, &format!("/v1/payment_intents/{id}")).await;
    assert_eq!((s, got["amount_received"].as_i64()), (200, Some(2000)));
    assert!(got["latest_charge"].is_string());
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn idempotency_replays_errors_and_refuses_other_parameters() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let body = "amount=2500&currency=usd&payment_method=pm_card_chargeDeclined&confirm=true";
    let (s1, _, first) = post_form(&fake, "/v1/payment_intents", body, Some("k1")).await;
    let (s2, h2, second) = post_form(&fake, "/v1/payment_intents", body, Some("k1")).await;
    assert_eq!((s1, s2), (402, 402));
    assert_eq!(first, second);
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    let other = "amount=2600&currency=usd&payment_method=pm_card_chargeDeclined&confirm=true";
    let (s3, _, e) = post_form(&fake, "/v1/payment_intents", other, Some("k1")).await;
    assert_eq!(
        (s3, e["error"]["type"].as_str()),
        (400, Some("idempotency_error"))
    );
    // The same key on another endpoint is another request too.
    let (s4, _, e) = post_form(&fake, "/v1/refunds", "payment_intent=pi_x", Some("k1")).await;
    assert_eq!(
        (s4, e["error"]["type"].as_str()),
        (400, Some("idempotency_error"))
    );
    // A validation error is not saved: fixing the request under the same key works.
    let (s5, _, _) = post_form(
        &fake,
        "/v1/payment_intents",
        "amount=10&currency=usd",
        Some("k2"),
    )
    .await;
    let (s6, _, _) = post_form(
        &fake,
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        Some("k2"),
    )
    .await;
    assert_eq!((s5, s6), (400, 200));
    // Concurrent requests with one key: one runs, the other is told 409.
    fake.set_latency(Duration::from_millis(300));
    let body = "amount=2500&currency=usd&payment_method=pm_card_visa&confirm=true";
    let (a, b) = tokio::join!(
        post_form(&fake, "/v1/payment_intents", body, Some("k3")),
        async {
            tokio::time::sleep(Duration::from_millis(80)).await;
            post_form(&fake, "/v1/payment_intents", body, Some("k3")).await
        }
    );
    assert_eq!((a.0, b.0), (200, 409));
    assert_eq!(b.2["error"]["type"], "idempotency_error");
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn lists_page_newest_first_and_search_finds_by_metadata() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let body = format!("amount={}&currency=usd&metadata[n]={i}", 100 + i);
        ids.push(
            post_form(&fake, "/v1/payment_intents", &body, None).await.2["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let (_, p1) = get_json(&fake, "/v1/payment_intents?limit=3").await;
    let got: Vec<&str> = p1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![&ids[6], &ids[5], &ids[4]]);
    assert_eq!(p1["has_more"], true);
    let (_, p3) = get_json(
        &fake,
        &format!("/v1/payment_intents?limit=3&starting_after={}", ids[1]),
    )
    .await;
    assert_eq!(p3["data"].as_array().unwrap().len(), 1);
    assert_eq!(p3["data"][0]["id"], ids[0].as_str());
    assert_eq!(p3["has_more"], false);
    let (_, back) = get_json(
        &fake,
        &format!("/v1/payment_intents?limit=2&ending_before={}", ids[2]),
    )
    .await;
    let got: Vec<&str> = back["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![&ids[4], &ids[3]]);
    let (s, _) = get_json(&fake, "/v1/payment_intents?starting_after=pi_nope").await;
    assert_eq!(s, 404);
    let (_, found) = get_json(
        &fake,
        "/v1/payment_intents/search?query=metadata%5B%27n%27%5D%3A%273%27",
    )
    .await;
    assert_eq!(found["object"], "search_result");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], ids[3].as_str());
    let (s, e) = get_json(&fake, "/v1/payment_intents/search?query=email%3A%27x%27").await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("query")));
}

#[tokio::test]
async fn faults_can_be_set_over_http() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let set = |fault: Value| {
        let url = format!("{}/_fake/faults", fake.url());
        async move { http().post(url).json(&fault).send().await.unwrap().status() }
    };
    assert_eq!(set(serde_json::json!({"fault": "down"})).await, 200);
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 503);
    set(serde_json::json!({"fault": "rate_limited"})).await;
    let (s, e) = get_json(&fake, "/v1/balance").await;
    assert_eq!((s, e["error"]["code"].as_str()), (429, Some("rate_limit")));
    set(serde_json::json!({"fault": "error_500"})).await;
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 500);
    set(serde_json::json!({"fault": "slow", "ms": 300})).await;
    let t = std::time::Instant::now();
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        set(serde_json::json!({"fault": "melt"})).await.as_u16(),
        422
    );
    set(serde_json::json!({"fault": "none"})).await;
    let card: Value = http()
        .post(format!("{}/_fake/cards", fake.url()))
        .json(&serde_json::json!({"fingerprint": "fpX", "last4": "1111"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pm = card["id"].as_str().unwrap();
    let body = format!("amount=500&currency=usd&payment_method={pm}&confirm=true");
    assert_eq!(
        post_form(&fake, "/v1/payment_intents", &body, None).await.0,
        200
    );
    let ledger: Value = http()
        .get(format!("{}/_fake/ledger", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger[0]["fingerprint"], "fpX");
    assert_eq!(ledger[0]["amount"], 500);
}

/// A webhook endpoint that records deliveries and fails the first `fail_first`.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<(String, Vec<u8>)>>,
    fail_first: Mutex<u32>,
}

async fn receive(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut fail = sink.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    sink.got.lock().unwrap().push((sig, body.to_vec()));
    StatusCode::OK
}

async fn sink(fail_first: u32) -> (Arc<Sink>, String, tokio::task::JoinHandle<()>) {
    let sink = Arc::new(Sink {
        fail_first: Mutex::new(fail_first),
        ..Sink::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(sink.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (sink, url, task)
}

async fn wait_for(sink: &Sink, n: usize) {
    for _ in 0..200 {
        if sink.got.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("only {} deliveries", sink.got.lock().unwrap().len());
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_can_be_duplicated_and_shuffled() {
    let (sink1, url, _t) = sink(2).await;
    let fake = FakeStripe::start(FakeStripeConfig {
        webhook: Some(WebhookTarget::new(url, "whsec_fake")),
        ..FakeStripeConfig::default()
    })
    .await
    .unwrap();
    let body = "amount=700&currency=usd&payment_method=pm_card_visa&confirm=true";
    let (_, _, pi) = post_form(&fake, "/v1/payment_intents", body, Some("w1")).await;
    let declined = "amount=700&currency=usd&payment_method=pm_card_chargeDeclined&confirm=true";
    post_form(&fake, "/v1/payment_intents", declined, None).await;
    post_form(
        &fake,
        "/v1/refunds",
        &format!("payment_intent={}", pi["id"].as_str().unwrap()),
        None,
    )
    .await;
    wait_for(&sink1, 3).await;
    let got = sink1.got.lock().unwrap().clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut kinds = Vec::new();
    for (sig, body) in &got {
        webhook::verify(Some(sig), body, "whsec_fake", now, 300).unwrap();
        let ev: Value = serde_json::from_slice(body).unwrap();
        kinds.push(ev["type"].as_str().unwrap().to_string());
    }
    // In order, each once, after the endpoint's two failures were retried.
    assert_eq!(
        kinds,
        [
            "payment_intent.succeeded",
            "payment_intent.payment_failed",
            "charge.refunded"
        ]
    );
    let first: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(first["data"]["object"]["id"], pi["id"]);
    assert_eq!(first["request"]["idempotency_key"], "w1");
    let tries = fake.deliveries();
    assert_eq!(tries.iter().filter(|d| d.status == Some(503)).count(), 2);
    assert_eq!(fake.events().len(), 3);
    // Duplicates and shuffled order.
    let (sink2, url, _t2) = sink(0).await;
    let mut target = WebhookTarget::new(url, "whsec_two");
    target.duplicates = true;
    target.shuffle_within = Duration::from_millis(300);
    fake.set_webhook(Some(target));
    for i in 0..10 {
        let body = format!(
            "amount={}&currency=usd&payment_method=pm_card_visa&confirm=true",
            100 + i
        );
        post_form(&fake, "/v1/payment_intents", &body, None).await;
    }
    wait_for(&sink2, 20).await;
    let got = sink2.got.lock().unwrap().clone();
    let ids: Vec<String> = got
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10);
    assert_eq!(ids.len(), 20);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_ne!(
        ids, sorted,
        "20 deliveries spread over 300 ms arrived in order"
    );
}

#[tokio::test]
async fn settings_stats_and_the_event_list_over_http() {
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let settings: Value = http()
        .post(format!("{}/_fake/settings", fake.url()))
        .json(&serde_json::json!({"latency_ms": 150, "rate_limit": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        settings,
        serde_json::json!({"latency_ms": 150, "rate_limit": 2})
    );
    let t = std::time::Instant::now();
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 200);
    assert_eq!(get_json(&fake, "/v1/balance").await.0, 429);
    http()
        .post(format!("{}/_fake/settings", fake.url()))
        .json(&serde_json::json!({"latency_ms": 0, "rate_limit": 0}))
        .send()
        .await
        .unwrap();
    for amount in [500, 600, 700] {
        let body = format!("amount={amount}&currency=usd&payment_method=pm_card_visa&confirm=true");
        assert_eq!(
            post_form(&fake, "/v1/payment_intents", &body, None).await.0,
            200
        );
    }
    let declined = "amount=800&currency=usd&payment_method=pm_card_chargeDeclined&confirm=true";
    assert_eq!(
        post_form(&fake, "/v1/payment_intents", declined, None)
            .await
            .0,
        402
    );
    let (_, page) = get_json(&fake, "/v1/events?type=payment_intent.succeeded&limit=2").await;
    let amounts: Vec<i64> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["object"]["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, vec![700, 600]);
    assert_eq!(page["has_more"], true);
    let last = page["data"][1]["id"].as_str().unwrap();
    let (_, rest) = get_json(
        &fake,
        &format!("/v1/events?type=payment_intent.succeeded&starting_after={last}"),
    )
    .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["data"]["object"]["amount"], 500);
    let stats: Value = http()
        .get(format!("{}/_fake/stats", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["rate_limited"], 1);
    assert_eq!(stats["declines"], 1);
}

#[tokio::test]
async fn runs_standalone_until_shut_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(narwhal_fakes::stripe::run(
        FakeStripeConfig::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let resp = http()
        .get(format!("{url}/v1/balance"))
        .bearer_auth(DEFAULT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the fake stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(http()
        .get(format!("{url}/v1/balance"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn two_fakes_never_hand_out_the_same_id() {
    let a = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let b = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let body = "amount=500&currency=usd";
    let (_, _, x) = post_form(&a, "/v1/payment_intents", body, None).await;
    let (_, _, y) = post_form(&b, "/v1/payment_intents", body, None).await;
    assert!(x["id"].as_str().unwrap().starts_with("pi_"));
    assert_ne!(x["id"], y["id"]);
}
