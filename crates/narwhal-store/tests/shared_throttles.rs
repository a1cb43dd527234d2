//! Send tokens shared through PostgreSQL: nodes drawing from one account's bucket at
//! the same time never get more than its rate and 24-hour quota together. On SQLite
//! (one node, its bucket in memory) the calls grant what is asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_store::test_support::TestDb;
use narwhal_store::throttles::SharedLimits;
use narwhal_store::{both_backends, now_ms, Backend};

const PER_S: SharedLimits = SharedLimits {
    limit: 100,
    period_ms: 1_000,
    burst: 100,
    daily: None,
};

async fn the_bucket_refills_exactly_and_says_when(db: TestDb) {
    let store = &db.store;
    let t0 = 1_700_000_000_000;
    let g = store.take_send_tokens("a", &PER_S, 70, t0).await.unwrap();
    assert_eq!(g.granted, 70);
    if store.backend() == Backend::Sqlite {
        assert!(!store.shares_send_tokens());
        return;
    }
    assert!(store.shares_send_tokens());
    let g = store.take_send_tokens("a", &PER_S, 70, t0).await.unwrap();
    assert_eq!(g.granted, 30);
    // Empty: one token takes 10 ms at 100/s.
    assert_eq!(g.retry_at, t0 + 10);
    let g = store
        .take_send_tokens("a", &PER_S, 70, t0 + 9)
        .await
        .unwrap();
    assert_eq!((g.granted, g.retry_at), (0, t0 + 10));
    let g = store
        .take_send_tokens("a", &PER_S, 70, t0 + 250)
        .await
        .unwrap();
    assert_eq!(g.granted, 25);
    // Another account has its own bucket.
    assert_eq!(
        store
            .take_send_tokens("b", &PER_S, 100, t0 + 250)
            .await
            .unwrap()
            .granted,
        100
    );
    // Unused tokens go back (never above the burst).
    store
        .give_back_send_tokens("a", &PER_S, 20, t0 + 250)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_send_tokens("a", &PER_S, 70, t0 + 250)
            .await
            .unwrap()
            .granted,
        20
    );
    store
        .give_back_send_tokens("a", &PER_S, 500, t0 + 10_000)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_send_tokens("a", &PER_S, 500, t0 + 10_000)
            .await
            .unwrap()
            .granted,
        100
    );
}

async fn the_daily_quota_holds_across_nodes_and_rolls(db: TestDb) {
    let store = &db.store;
    if store.backend() == Backend::Sqlite {
        return;
    }
    let limits = SharedLimits {
        daily: Some(250),
        ..PER_S
    };
    let t0 = 1_700_000_000_000;
    let mut total = 0;
    for s in 0..10 {
        total += store
            .take_send_tokens("d", &limits, 100, t0 + s * 1_000)
            .await
            .unwrap()
            .granted;
    }
    assert_eq!(total, 250);
    let g = store
        .take_send_tokens("d", &limits, 1, t0 + 20_000)
        .await
        .unwrap();
    assert_eq!(g.granted, 0);
    // Free once the first minute's end is 24 hours old, not a millisecond before.
    let free = (t0 / 60_000 + 1) * 60_000 + 86_400_000;
    assert_eq!(g.retry_at, free);
    assert_eq!(
        store.shared_sends_last_24h("d", t0 + 20_000).await.unwrap(),
        250
    );
    assert_eq!(
        store
            .take_send_tokens("d", &limits, 1, free - 1)
            .await
            .unwrap()
            .granted,
        0
    );
    assert_eq!(
        store
            .take_send_tokens("d", &limits, 100, free)
            .await
            .unwrap()
            .granted,
        100
    );
}

/// Two "nodes" (tasks on separate connections) take tokens as fast as they can for
/// 1.5 s: together they get at most the burst plus the refill, and each gets a share.
async fn nodes_drawing_at_once_stay_within_the_rate(db: TestDb) {
    let store = &db.store;
    if store.backend() == Backend::Sqlite {
        return;
    }
    let start = now_ms();
    let run = |s: narwhal_store::Store| async move {
        let mut got = 0u64;
        while now_ms() - start < 1_500 {
            let g = s
                .take_send_tokens("shared", &PER_S, 7, now_ms())
                .await
                .unwrap();
            got += u64::from(g.granted);
            if g.granted == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        got
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run(store.clone())),
        tokio::spawn(run(store.clone()))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let elapsed = (now_ms() - start) as u64;
    let cap = 100 + elapsed * 100 / 1_000 + 1;
    assert!(a + b <= cap, "{a} + {b} > {cap} in {elapsed} ms");
    assert!(a + b >= 200, "{a} + {b}: the bucket should have been used");
    assert!(a > 20 && b > 20, "{a} / {b}");
}

/// Nodes taking tokens while others give unused ones back (a slice that found fewer
/// recipients than granted): neither call ever fails, in particular not with a
/// deadlock, which would make a blast lane drop a slice it had already claimed.
async fn taking_and_giving_back_at_once_never_deadlock(db: TestDb) {
    let store = &db.store;
    if store.backend() == Backend::Sqlite {
        return;
    }
    let limits = SharedLimits {
        limit: 100_000,
        period_ms: 1_000,
        burst: 100_000,
        daily: Some(1_000_000_000),
    };
    let start = now_ms();
    let run = |s: narwhal_store::Store| async move {
        let mut calls = 0u32;
        while now_ms() - start < 1_500 {
            let g = s.take_send_tokens("mixed", &limits, 50, now_ms()).await;
            let g = g.unwrap_or_else(|e| panic!("take after {calls} calls: {e}"));
            if g.granted > 0 {
                s.give_back_send_tokens("mixed", &limits, g.granted / 2, now_ms())
                    .await
                    .unwrap_or_else(|e| panic!("give back after {calls} calls: {e}"));
            }
            calls += 1;
        }
        calls
    };
    let tasks: Vec<_> = (0..4).map(|_| tokio::spawn(run(store.clone()))).collect();
    for t in tasks {
        assert!(t.await.unwrap() > 10);
    }
}

both_backends!(
    taking_and_giving_back_at_once_never_deadlock,
    the_bucket_refills_exactly_and_says_when,
    the_daily_quota_holds_across_nodes_and_rolls,
    nodes_drawing_at_once_stay_within_the_rate,
);
