//! The turnout service on SQLite and PostgreSQL: setup, idempotent ingest, undo,
//! authorization by polling place, flushing lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{PersonDraft, PersonId, SegmentFilter};
use narwhal_people::Hub;
use narwhal_store::both_backends;
use narwhal_store::test_support::TestDb;
use narwhal_turnout::{
    Channel, LoginFailure, LoginKind, ReportItem, Reporter, Turnout, TurnoutError, VoterCode,
};
use serde_json::json;

const PLACES: &str = "code,name,address,county,precincts
P1,Lincoln Elementary,12 Main St,FRANKLIN,FRA-001;FRA-002
P2,Oak Library,3 Oak Ave,franklin,fra-003
";

/// Voters by name: a, b, c vote at P1; d, e at P2; f's precinct has no place.
struct Fixture {
    t: Turnout,
    people: std::collections::HashMap<&'static str, PersonId>,
    watcher: Reporter,
}

impl Fixture {
    fn id(&self, n: &str) -> PersonId {
        self.people[n]
    }
    async fn code(&self, n: &str) -> String {
        self.t
            .voter_code(self.id(n))
            .await
            .unwrap()
            .unwrap()
            .to_string()
    }
    async fn mark(&self, rid: &str, n: &str) -> ReportItem {
        ReportItem {
            report_id: rid.into(),
            voter_code: Some(self.code(n).await),
            person_id: None,
            voted_at: None,
            undo: false,
        }
    }
    async fn remaining(&self, place: &str) -> Vec<PersonId> {
        self.t
            .remaining(place, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.person_id)
            .collect()
    }
}

fn outcomes(r: &narwhal_turnout::BatchResult) -> Vec<String> {
    r.results
        .iter()
        .map(|x| match x.reason {
            Some(reason) => format!("{}:{reason}", x.outcome),
            None => x.outcome.to_string(),
        })
        .collect()
}

async fn setup(db: &TestDb) -> Fixture {
    let store = db.store.clone();
    let hub = Hub::new(store.clone());
    let t = Turnout::new(store.clone());
    assert_eq!(
        t.import_places("places.csv", PLACES.as_bytes())
            .await
            .unwrap(),
        2
    );
    let mut people = std::collections::HashMap::new();
    for (i, (n, precinct, tag)) in [
        ("a", "FRA-001", "supporter"),
        ("b", "FRA-002", "supporter"),
        ("c", "FRA-001", "supporter"),
        ("d", "FRA-003", "supporter"),
        ("e", "FRA-003", "supporter"),
        ("f", "FRA-009", "supporter"),
        ("g", "FRA-001", "undecided"),
    ]
    .into_iter()
    .enumerate()
    {
        let d: PersonDraft = serde_json::from_value(json!({
            "voter_id": format!("OH-{i}"), "first_name": n, "last_name": "Voter",
            "address": {"line1": format!("{i} Main St"), "state": "OH", "county": "Franklin", "precinct": precinct},
            "tags": [tag]}))
        .unwrap();
        people.insert(n, hub.upsert(d, "test", "test").await.unwrap().id);
    }
    let filter = SegmentFilter::parse(&json!({"tag": "supporter"})).unwrap();
    let seg = store.create_segment("supporters", &filter).await.unwrap();
    let built = t.build_universe(seg).await.unwrap();
    assert_eq!((built.added, built.unassigned), (5, 1));
    // Building again adds no one and keeps the codes.
    let code_a = t.voter_code(people["a"]).await.unwrap().unwrap();
    assert_eq!(t.build_universe(seg).await.unwrap().added, 0);
    assert_eq!(t.voter_code(people["a"]).await.unwrap().unwrap(), code_a);
    assert!(t.voter_code(people["g"]).await.unwrap().is_none());
    let issued = t
        .issue_watcher("watcher-p1", "p1", LoginKind::Link, None)
        .await
        .unwrap();
    let w = t.login_link(issued.secret.expose()).await.unwrap().unwrap();
    assert_eq!(w.polling_place, "P1");
    Fixture {
        t,
        people,
        watcher: Reporter::Watcher(w),
    }
}

async fn duplicates_count_once(db: TestDb) {
    let f = setup(&db).await;
    let mut by_id = f.mark("r2", "a").await;
    by_id.voter_code = None;
    by_id.person_id = Some(f.id("a").0);
    let batch = vec![f.mark("r1", "a").await, f.mark("r1", "a").await, by_id];
    let r = f.t.ingest(&f.watcher, Channel::App, &batch).await.unwrap();
    assert_eq!(outcomes(&r), ["accepted", "duplicate", "accepted"]);
    assert_eq!((r.accepted, r.duplicates, r.rejected), (2, 1, 0));
    // The whole batch again (a retry), and the same report by another channel.
    let r = f.t.ingest(&f.watcher, Channel::App, &batch).await.unwrap();
    assert_eq!(outcomes(&r), ["duplicate", "duplicate", "duplicate"]);
    let r =
        f.t.ingest(&Reporter::Staff, Channel::Sms, &batch[..1])
            .await
            .unwrap();
    assert_eq!(outcomes(&r), ["duplicate"]);
    assert_eq!(db.store.report_rows().await.unwrap(), 2);
    // Two reports of one person: counted once.
    assert_eq!(db.store.voted_count().await.unwrap(), 1);
    let fra1 =
        f.t.by_precinct()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.precinct == "FRA-001")
            .unwrap();
    assert_eq!((fra1.universe, fra1.voted), (2, 1));
}

async fn concurrent_duplicates_count_once(db: TestDb) {
    let f = setup(&db).await;
    for round in 0..5 {
        let batch = vec![
            f.mark(&format!("c{round}-a"), "a").await,
            f.mark(&format!("c{round}-b"), "b").await,
            f.mark(&format!("c{round}-c"), "c").await,
        ];
        let (t1, t2) = (f.t.clone(), f.t.clone());
        let (w1, w2) = (f.watcher.clone(), f.watcher.clone());
        let (b1, b2) = (batch.clone(), batch.clone());
        let h1 = tokio::spawn(async move { t1.ingest(&w1, Channel::App, &b1).await.unwrap() });
        let h2 = tokio::spawn(async move { t2.ingest(&w2, Channel::App, &b2).await.unwrap() });
        let (r1, r2) = (h1.await.unwrap(), h2.await.unwrap());
        assert_eq!(r1.accepted + r2.accepted, 3, "round {round}");
        assert_eq!(r1.duplicates + r2.duplicates, 3, "round {round}");
    }
    assert_eq!(db.store.report_rows().await.unwrap(), 15);
    assert_eq!(db.store.voted_count().await.unwrap(), 3);
}

async fn other_places_are_rejected_alone(db: TestDb) {
    let f = setup(&db).await;
    // A well-formed code that belongs to no one (codes are seq-derived; 0 is not one
    // of the first five).
    let unknown = VoterCode::from_stored(0).unwrap().to_string();
    for n in ["a", "b", "c", "d", "e"] {
        assert_ne!(f.code(n).await, unknown);
    }
    let code_a = f.code("a").await;
    let typo = format!("{}{}", &code_a[..7], (code_a.as_bytes()[7] - b'0' + 1) % 10);
    let bad = |rid: &str, code: &str| ReportItem {
        report_id: rid.into(),
        voter_code: Some(code.into()),
        person_id: None,
        voted_at: None,
        undo: false,
    };
    let batch = vec![
        f.mark("x1", "a").await,
        f.mark("x2", "d").await,
        bad("x3", &unknown),
        bad("x4", &typo),
        bad("not a uuid!", &code_a),
        f.mark("x6", "b").await,
    ];
    let r = f.t.ingest(&f.watcher, Channel::App, &batch).await.unwrap();
    assert_eq!(
        outcomes(&r),
        [
            "accepted",
            "rejected:other_polling_place",
            "rejected:unknown_voter",
            "rejected:invalid_voter_code",
            "rejected:invalid_report_id",
            "accepted"
        ]
    );
    assert_eq!(f.remaining("P1").await, vec![f.id("c")]);
    assert_eq!(f.remaining("P2").await.len(), 2);
    // Staff may report anywhere.
    let r =
        f.t.ingest(&Reporter::Staff, Channel::Bulk, &batch[1..2])
            .await
            .unwrap();
    assert_eq!(outcomes(&r), ["accepted"]);
    assert_eq!(f.remaining("P2").await, vec![f.id("e")]);
    // A report id reused for another voter is not silently dropped.
    let r =
        f.t.ingest(&f.watcher, Channel::App, &[f.mark("x1", "c").await])
            .await
            .unwrap();
    assert_eq!(outcomes(&r), ["rejected:report_id_reused"]);
    // Oversized batches are refused whole, before anything is written.
    let big: Vec<ReportItem> = (0..=narwhal_turnout::MAX_BATCH)
        .map(|i| bad(&format!("big{i}"), &code_a))
        .collect();
    assert!(matches!(
        f.t.ingest(&f.watcher, Channel::App, &big).await,
        Err(TurnoutError::Invalid(_))
    ));
    assert_eq!(db.store.report_rows().await.unwrap(), 3);
}

async fn undo_is_idempotent_and_order_free(db: TestDb) {
    let f = setup(&db).await;
    let mark = f.mark("u1", "a").await;
    let mut undo = mark.clone();
    undo.undo = true;
    let w = &f.watcher;
    assert_eq!(
        outcomes(
            &f.t.ingest(w, Channel::App, std::slice::from_ref(&mark))
                .await
                .unwrap()
        ),
        ["accepted"]
    );
    assert!(!f.remaining("P1").await.contains(&f.id("a")));
    let p1 = f.t.places().await.unwrap().remove(0);
    assert_eq!((p1.universe, p1.remaining), (3, 2));
    // (supporters, voted) summed over the precincts.
    let totals = |v: Vec<narwhal_store::turnout::PrecinctTurnout>| -> (i64, i64) {
        (
            v.iter().map(|p| p.universe).sum(),
            v.iter().map(|p| p.voted).sum(),
        )
    };
    assert_eq!(totals(f.t.by_precinct().await.unwrap()), (5, 1));
    assert_eq!(
        outcomes(
            &f.t.ingest(w, Channel::App, std::slice::from_ref(&undo))
                .await
                .unwrap()
        ),
        ["accepted"]
    );
    assert!(f.remaining("P1").await.contains(&f.id("a")));
    // The place's count follows the undo too.
    let p1 = f.t.places().await.unwrap().remove(0);
    assert_eq!((p1.code.as_str(), p1.universe, p1.remaining), ("P1", 3, 3));
    assert_eq!(totals(f.t.by_precinct().await.unwrap()), (5, 0));
    assert_eq!(
        outcomes(
            &f.t.ingest(w, Channel::App, std::slice::from_ref(&undo))
                .await
                .unwrap()
        ),
        ["duplicate"]
    );
    // A late retry of the undone report does not bring it back.
    assert_eq!(
        outcomes(
            &f.t.ingest(w, Channel::App, std::slice::from_ref(&mark))
                .await
                .unwrap()
        ),
        ["duplicate"]
    );
    assert_eq!(db.store.voted_count().await.unwrap(), 0);
    // An undo that arrives before its report: the report, when it comes, stays undone.
    let mark_b = f.mark("u2", "b").await;
    let mut undo_b = mark_b.clone();
    undo_b.undo = true;
    assert_eq!(
        outcomes(&f.t.ingest(w, Channel::App, &[undo_b]).await.unwrap()),
        ["accepted"]
    );
    assert_eq!(
        outcomes(&f.t.ingest(w, Channel::App, &[mark_b]).await.unwrap()),
        ["duplicate"]
    );
    assert!(f.remaining("P1").await.contains(&f.id("b")));
    // Mark and undo in one batch: undone, whatever the order.
    let mark_c = f.mark("u3", "c").await;
    let mut undo_c = mark_c.clone();
    undo_c.undo = true;
    let r =
        f.t.ingest(w, Channel::App, &[undo_c, mark_c])
            .await
            .unwrap();
    assert_eq!(outcomes(&r), ["accepted", "accepted"]);
    assert_eq!(db.store.voted_count().await.unwrap(), 0);
    assert_eq!(f.remaining("P1").await.len(), 3);
    // Undoing one of two reports of a voter keeps them voted.
    f.t.ingest(
        w,
        Channel::App,
        &[f.mark("u4", "a").await, f.mark("u5", "a").await],
    )
    .await
    .unwrap();
    let mut u = f.mark("u4", "a").await;
    u.undo = true;
    f.t.ingest(w, Channel::App, &[u]).await.unwrap();
    assert!(!f.remaining("P1").await.contains(&f.id("a")));
}

async fn flushing_and_readiness(db: TestDb) {
    let f = setup(&db).await;
    let Reporter::Watcher(w) = &f.watcher else {
        unreachable!()
    };
    let r = f.t.readiness(w).await.unwrap();
    assert_eq!(r.polling_place.code, "P1");
    assert_eq!(
        (r.polling_place.universe, r.polling_place.remaining),
        (3, 3)
    );
    assert!(
        r.message.contains("your list has 3 voters"),
        "{}",
        r.message
    );
    let list = f.t.remaining("P1", None, 1000).await.unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|v| VoterCode::parse(&v.voter_code).is_ok()));
    assert_eq!(list[0].first_name.as_deref(), Some("a"));
    f.t.ingest(
        &f.watcher,
        Channel::App,
        &[f.mark("f1", "a").await, f.mark("f2", "c").await],
    )
    .await
    .unwrap();
    assert_eq!(f.remaining("P1").await, vec![f.id("b")]);
    let places = f.t.places().await.unwrap();
    assert_eq!((places[0].universe, places[0].remaining), (3, 1));
    assert_eq!((places[1].universe, places[1].remaining), (2, 2));
    let r = f.t.readiness(w).await.unwrap();
    assert_eq!(r.polling_place.remaining, 1);
    // Paging by person id.
    let all = f.t.remaining("P2", None, 1).await.unwrap();
    assert_eq!(all.len(), 1);
    let next =
        f.t.remaining("P2", Some(all[0].person_id), 1)
            .await
            .unwrap();
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].person_id, all[0].person_id);
}

async fn logins_and_bad_csv(db: TestDb) {
    let f = setup(&db).await;
    let pin =
        f.t.issue_watcher("watcher-p2", "P2", LoginKind::Pin, None)
            .await
            .unwrap();
    assert_eq!(pin.secret.expose().len(), 6);
    assert_eq!(format!("{:?}", pin.secret), "[redacted]");
    let w =
        f.t.login_pin("watcher-p2", pin.secret.expose())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(w.polling_place, "P2");
    let wrong = if pin.secret.expose() == "000000" {
        "000001"
    } else {
        "000000"
    };
    assert_eq!(
        f.t.login_pin("watcher-p2", wrong)
            .await
            .unwrap()
            .unwrap_err(),
        LoginFailure::Wrong
    );
    assert_eq!(
        f.t.login_pin("nobody", wrong).await.unwrap().unwrap_err(),
        LoginFailure::Wrong
    );
    assert_eq!(
        f.t.login_link("nwt_forged").await.unwrap().unwrap_err(),
        LoginFailure::Wrong
    );
    // The stored secret is a hash, never the PIN.
    assert!(!w.secret_hash.contains(pin.secret.expose()));
    let old =
        f.t.issue_watcher("late", "P1", LoginKind::Link, Some(-1))
            .await
            .unwrap();
    assert_eq!(
        f.t.login_link(old.secret.expose())
            .await
            .unwrap()
            .unwrap_err(),
        LoginFailure::Expired
    );
    assert!(matches!(
        f.t.issue_watcher("nowhere", "P9", LoginKind::Pin, None)
            .await,
        Err(TurnoutError::NotFound("polling place"))
    ));
    // A bad file names file, line and reason, and imports nothing.
    let bad =
        "code,name,address,county,precincts\nP3,New,,FRANKLIN,FRA-010\nP4,,,FRANKLIN,FRA-011\n";
    let e =
        f.t.import_places("more.csv", bad.as_bytes())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("more.csv:3: name is empty"), "{e}");
    assert_eq!(f.t.places().await.unwrap().len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("places.csv");
    std::fs::write(&p, "code,name,address,county\n").unwrap();
    let e = f.t.import_places_file(&p).await.unwrap_err().to_string();
    assert!(
        e.contains("places.csv:1: the header has no column \"precincts\""),
        "{e}"
    );
}

both_backends!(
    duplicates_count_once,
    concurrent_duplicates_count_once,
    other_places_are_rejected_alone,
    undo_is_idempotent_and_order_free,
    flushing_and_readiness,
    logins_and_bad_csv,
);
