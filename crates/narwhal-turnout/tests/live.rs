//! Live turnout, flushing lists and early-vote files on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{PersonDraft, PersonId, SegmentFilter};
use narwhal_people::Hub;
use narwhal_store::both_backends;
use narwhal_store::test_support::TestDb;
use narwhal_turnout::early::EarlyVoteMapping;
use narwhal_turnout::lists::{ListKind, NewGotvList, PrecinctRef};
use narwhal_turnout::live::{self, ExpectedCurve, LiveTurnout};
use narwhal_turnout::{Channel, ReportItem, Reporter, Turnout};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PLACES: &str = "code,name,address,county,precincts
P1,Lincoln Elementary,12 Main St,FRANKLIN,FRA-001;FRA-002
P2,Oak Library,3 Oak Ave,DELAWARE,DEL-001
";

/// a, b at FRA-001 (P1); c at FRA-002 (P1); d, e at DEL-001 (P2); z is no supporter.
async fn setup(db: &TestDb) -> (Turnout, HashMap<&'static str, PersonId>) {
    let store = db.store.clone();
    let hub = Hub::new(store.clone());
    let t = Turnout::new(store.clone());
    t.import_places("places.csv", PLACES.as_bytes())
        .await
        .unwrap();
    let mut people = HashMap::new();
    for (i, (n, county, precinct, tag, phone)) in [
        (
            "a",
            "FRANKLIN",
            "FRA-001",
            "supporter",
            Some("+16145550101"),
        ),
        ("b", "FRANKLIN", "FRA-001", "supporter", None),
        (
            "c",
            "FRANKLIN",
            "FRA-002",
            "supporter",
            Some("+16145550103"),
        ),
        ("d", "DELAWARE", "DEL-001", "supporter", None),
        ("e", "DELAWARE", "DEL-001", "supporter", None),
        ("z", "FRANKLIN", "FRA-001", "undecided", None),
    ]
    .into_iter()
    .enumerate()
    {
        let mut v = json!({
            "voter_id": format!("OH-{n}"), "first_name": n, "last_name": "Voter",
            "address": {"line1": format!("{} Main St", 10 - i), "city": "Columbus", "state": "OH", "county": county, "precinct": precinct},
            "tags": [tag]});
        if let Some(p) = phone {
            v["phones"] = json!([p]);
        }
        let d: PersonDraft = serde_json::from_value(v).unwrap();
        people.insert(n, hub.upsert(d, "test", "test").await.unwrap().id);
    }
    let seg = store
        .create_segment(
            "supporters",
            &SegmentFilter::parse(&json!({"tag": "supporter"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(t.build_universe(seg).await.unwrap().added, 5);
    (t, people)
}

fn mark(rid: &str, p: PersonId, undo: bool) -> ReportItem {
    ReportItem {
        report_id: rid.into(),
        voter_code: None,
        person_id: Some(p.0),
        voted_at: None,
        undo,
    }
}

async fn voted(t: &Turnout) -> i64 {
    live::compute(t.store()).await.unwrap().state.voted
}

async fn voted_follows_reports_undo_and_the_clock(db: TestDb) {
    let (t, p) = setup(&db).await;
    let c0 = db.store.turnout_clock().await.unwrap();
    let s = Reporter::Staff;
    // Two reports of a, one of d.
    let r = t
        .ingest(
            &s,
            Channel::Bulk,
            &[
                mark("r1", p["a"], false),
                mark("r2", p["a"], false),
                mark("r3", p["d"], false),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.accepted, 3);
    let c1 = db.store.turnout_clock().await.unwrap();
    assert!(c1 > c0, "the clock moves on a change");
    let d = live::compute(&db.store).await.unwrap();
    assert_eq!((d.state.universe, d.state.voted), (5, 2));
    assert_eq!(d.place("P1").unwrap().figures.voted, 1);
    assert_eq!(d.place("P2").unwrap().figures.voted, 1);
    let fra = d.counties.iter().find(|c| c.county == "FRANKLIN").unwrap();
    assert_eq!((fra.figures.universe, fra.figures.voted), (3, 1));
    // A retry changes nothing and does not move the clock.
    t.ingest(&s, Channel::Bulk, &[mark("r1", p["a"], false)])
        .await
        .unwrap();
    assert_eq!(db.store.turnout_clock().await.unwrap(), c1);
    // Undoing one of a's two reports keeps a voted; undoing both brings a back.
    t.ingest(&s, Channel::Bulk, &[mark("r1", p["a"], true)])
        .await
        .unwrap();
    assert_eq!(voted(&t).await, 2);
    t.ingest(&s, Channel::Bulk, &[mark("r2", p["a"], true)])
        .await
        .unwrap();
    assert_eq!(voted(&t).await, 1);
    let left: Vec<PersonId> = t
        .remaining("P1", None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.person_id)
        .collect();
    assert!(left.contains(&p["a"]));
    // An undo arriving before its report leaves the voter not voted.
    t.ingest(&s, Channel::Bulk, &[mark("r9", p["b"], true)])
        .await
        .unwrap();
    t.ingest(&s, Channel::Bulk, &[mark("r9", p["b"], false)])
        .await
        .unwrap();
    assert_eq!(voted(&t).await, 1);
}

async fn concurrent_batches_keep_counts_exact(db: TestDb) {
    // Many writers (as several nodes would) reporting overlapping voters: the voted
    // mark always equals "has a live report".
    let (t, p) = setup(&db).await;
    let ids: Vec<PersonId> = ["a", "b", "c", "d", "e"].iter().map(|n| p[n]).collect();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = db.store.dedicated(2);
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let t = Turnout::new(store);
            for round in 0..5 {
                let batch: Vec<ReportItem> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| mark(&format!("w{w}-r{round}-{i}"), *id, false))
                    .collect();
                t.ingest(&Reporter::Staff, Channel::Bulk, &batch)
                    .await
                    .unwrap();
                // Undo this round's report of the first voter.
                t.ingest(
                    &Reporter::Staff,
                    Channel::Bulk,
                    &[mark(&format!("w{w}-r{round}-0"), ids[0], true)],
                )
                .await
                .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Everyone but a has live reports; a's were all undone.
    assert_eq!(voted(&t).await, 4);
    assert_eq!(db.store.voted_count().await.unwrap(), 4);
    // The tallies the racing writers kept agree with a scan of who voted.
    let now = narwhal_store::now_ms();
    let opens = now - now.rem_euclid(3_600_000);
    let fast = folded(db.store.turnout_cells(opens).await.unwrap());
    assert_eq!(
        fast,
        folded(db.store.turnout_cells_by_scan(opens).await.unwrap())
    );
    assert_eq!(fast.0.iter().map(|c| c.4).sum::<i64>(), 4);
    let left: Vec<PersonId> = t
        .remaining("P1", None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.person_id)
        .collect();
    assert_eq!(left, vec![p["a"]]);
}

async fn lists_flush_and_export(db: TestDb) {
    let (t, p) = setup(&db).await;
    let turf = t
        .create_list(&NewGotvList {
            name: "P1 doors".into(),
            kind: ListKind::Turf,
            segment: None,
            polling_place: Some("p1".into()),
            precinct: None,
        })
        .await
        .unwrap();
    assert_eq!((turf.members, turf.remaining), (3, 3));
    let seg = db
        .store
        .create_segment(
            "franklin",
            &SegmentFilter::parse(&json!({"county": "FRANKLIN"})).unwrap(),
        )
        .await
        .unwrap();
    let calls = t
        .create_list(&NewGotvList {
            name: "Franklin calls".into(),
            kind: ListKind::Calls,
            segment: Some(seg.0),
            polling_place: None,
            precinct: None,
        })
        .await
        .unwrap();
    // z matches the segment but is no supporter: not taken.
    assert_eq!(calls.members, 3);
    let del = t
        .create_list(&NewGotvList {
            name: "Delaware".into(),
            kind: ListKind::Turf,
            segment: None,
            polling_place: None,
            precinct: Some(PrecinctRef {
                county: "delaware".into(),
                precinct: "del-001".into(),
            }),
        })
        .await
        .unwrap();
    assert_eq!(del.members, 2);
    let empty = t
        .create_list(&NewGotvList {
            name: "Hand picked".into(),
            kind: ListKind::Calls,
            segment: None,
            polling_place: None,
            precinct: None,
        })
        .await
        .unwrap();
    assert_eq!(
        t.assign(empty.id, &[p["d"], p["z"], p["d"]]).await.unwrap(),
        1
    );
    // A taken name and two sources at once are refused.
    assert!(t
        .create_list(&NewGotvList {
            name: "P1 doors".into(),
            kind: ListKind::Turf,
            segment: None,
            polling_place: None,
            precinct: None,
        })
        .await
        .is_err());
    // a votes: off the turf and the call list at once.
    t.ingest(
        &Reporter::Staff,
        Channel::Bulk,
        &[mark("v1", p["a"], false)],
    )
    .await
    .unwrap();
    assert_eq!(t.list(turf.id).await.unwrap().remaining, 2);
    assert_eq!(t.list(calls.id).await.unwrap().remaining, 2);
    let rows = t.list_remaining(turf.id, None, 100).await.unwrap();
    assert!(rows.iter().all(|r| r.person_id != p["a"]));
    // The walk sheet is in address order (b lives at 9, c at 8 Main St).
    let (_, csv) = t.export_list(turf.id).await.unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let addrs: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap())
        .collect();
    assert_eq!(addrs, ["8 Main St", "9 Main St"]);
    // The call sheet has those with phones still to call: c only (a voted, b no phone).
    let (_, csv) = t.export_list(calls.id).await.unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("+16145550103"));
    assert!(!csv.contains("+16145550101"));
}

async fn early_vote_pre_flushes_once(db: TestDb) {
    let (t, p) = setup(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absentee.csv");
    std::fs::write(
        &file,
        "SOS_VOTERID,DATE_RETURNED\nOH-a,2024-10-20\nOH-d,10/21/2024\nOH-z,2024-10-22\nOH-nobody,2024-10-22\n,2024-10-22\nOH-e,someday\n",
    )
    .unwrap();
    let m = EarlyVoteMapping::parse(
        "[source]\nname = \"oh-absentee\"\n[columns]\nvoter_id = \"SOS_VOTERID\"\nvoted_on = \"DATE_RETURNED\"\n",
    )
    .unwrap();
    let c = t.import_early_vote(&file, &m).await.unwrap();
    assert_eq!(c.rows, 6);
    assert_eq!((c.reported, c.already), (2, 0));
    assert_eq!((c.not_in_universe, c.unknown_voter, c.rejected), (1, 1, 2));
    let rejects = std::fs::read_to_string(c.rejects_path.unwrap()).unwrap();
    assert!(rejects.contains("6,the voter id is empty"), "{rejects}");
    assert!(rejects.contains("7,\"the date is not"), "{rejects}");
    // Off the lists, counted in hour 0 of the dashboard, on the early_vote channel.
    assert_eq!(voted(&t).await, 2);
    let left: Vec<PersonId> = t
        .remaining("P2", None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.person_id)
        .collect();
    assert_eq!(left, vec![p["e"]]);
    // Importing again changes nothing.
    let c = t.import_early_vote(&file, &m).await.unwrap();
    assert_eq!((c.reported, c.already), (0, 2));
    assert_eq!(db.store.report_rows().await.unwrap(), 2);
    // A watcher reporting the same voter later does not count them twice.
    t.ingest(
        &Reporter::Staff,
        Channel::App,
        &[mark("later", p["a"], false)],
    )
    .await
    .unwrap();
    assert_eq!(voted(&t).await, 2);
}

async fn a_report_on_another_node_is_seen_within_a_second(db: TestDb) {
    let (t, p) = setup(&db).await;
    live::set_curve(&db.store, &ExpectedCurve::typical(1))
        .await
        .unwrap();
    let live = LiveTurnout::new(db.store.clone());
    let mut rx = live.subscribe();
    // The first figures arrive.
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(d) = rx.borrow_and_update().clone() {
                return d;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(first.state.voted, 0);
    assert_eq!(first.curve.opens_at, 1);
    // Another node (its own pool, no nudge) takes a report.
    let other = Turnout::new(db.store.dedicated(2));
    let started = Instant::now();
    other
        .ingest(
            &Reporter::Staff,
            Channel::Bulk,
            &[mark("n2", p["c"], false)],
        )
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            rx.changed().await.unwrap();
            let d = rx.borrow_and_update().clone().unwrap();
            if d.state.voted == 1 {
                return d;
            }
        }
    })
    .await
    .expect("the report reaches the live figures within 1 s");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(seen.place("P1").unwrap().figures.voted, 1);
    drop(t);
}

async fn group_commit_gives_each_batch_its_own_outcomes(db: TestDb) {
    // Twenty batches at once through one group commit: each report id is accepted
    // once across all of them, and a watcher's batch keeps its polling place check.
    let (_, p) = setup(&db).await;
    let t = Turnout::with_group_commit(db.store.clone());
    let issued = t
        .issue_watcher("w-p2", "P2", narwhal_turnout::LoginKind::Link, None)
        .await
        .unwrap();
    let w = t.login_link(issued.secret.expose()).await.unwrap().unwrap();
    let mut tasks = Vec::new();
    for k in 0..20 {
        let t = t.clone();
        let (reporter, items) = if k == 7 {
            // A P2 watcher reporting a (P1) and d (P2).
            (
                Reporter::Watcher(w.clone()),
                vec![mark("w7-a", p["a"], false), mark("w7-d", p["d"], false)],
            )
        } else {
            // Every other batch sends the same two reports.
            (
                Reporter::Staff,
                vec![mark("same-b", p["b"], false), mark("same-e", p["e"], false)],
            )
        };
        tasks.push(tokio::spawn(async move {
            (k, t.ingest(&reporter, Channel::App, &items).await.unwrap())
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        let (k, r) = task.await.unwrap();
        if k == 7 {
            let o: Vec<_> = r.results.iter().map(|x| (x.outcome, x.reason)).collect();
            assert_eq!(
                o,
                [
                    ("rejected", Some("other_polling_place")),
                    ("accepted", None)
                ]
            );
        } else {
            assert_eq!(r.rejected, 0);
            assert_eq!(r.accepted + r.duplicates, 2);
            accepted += r.accepted;
        }
    }
    assert_eq!(accepted, 2, "each report id is accepted once");
    assert_eq!(db.store.report_rows().await.unwrap(), 3);
    assert_eq!(voted(&t).await, 3);
}

async fn group_commit_answers_retries_as_the_database_does(db: TestDb) {
    // A batch every item of which an earlier commit decided is answered from the group
    // commit's memory: each answer must equal the one the database gives (asked
    // through a service without group commit, on the same data).
    let (_, p) = setup(&db).await;
    let g = Turnout::with_group_commit(db.store.clone());
    let plain = Turnout::new(db.store.clone());
    let issued = g
        .issue_watcher("w-memo", "P2", narwhal_turnout::LoginKind::Link, None)
        .await
        .unwrap();
    let w = Reporter::Watcher(g.login_link(issued.secret.expose()).await.unwrap().unwrap());
    let s = Reporter::Staff;
    let first = g
        .ingest(
            &s,
            Channel::App,
            &[
                mark("m0", p["b"], false),
                mark("m1", p["a"], false),
                mark("m2", p["d"], false),
            ],
        )
        .await
        .unwrap();
    assert_eq!(first.accepted, 3);
    let probes: Vec<(&Reporter, Vec<ReportItem>)> = vec![
        // The retry.
        (
            &s,
            vec![mark("m1", p["a"], false), mark("m2", p["d"], false)],
        ),
        // An id reused for another voter, and a repeat inside the batch.
        (
            &s,
            vec![
                mark("m1", p["b"], false),
                mark("m2", p["d"], false),
                mark("m2", p["d"], false),
            ],
        ),
        // A P2 watcher: d is theirs, a votes at P1.
        (
            &w,
            vec![mark("m2", p["d"], false), mark("m1", p["a"], false)],
        ),
        // A voter not in the universe.
        (
            &s,
            vec![mark("m1", p["a"], false), mark("m9", p["z"], false)],
        ),
    ];
    for (who, items) in &probes {
        let from_group = g.ingest(who, Channel::App, items).await.unwrap();
        let from_db = plain.ingest(who, Channel::App, items).await.unwrap();
        assert_eq!(from_group.results, from_db.results);
        assert_eq!(from_group.accepted, 0);
    }
    // An undo is never answered from memory, and a new id in a known batch is stored.
    let undo = g
        .ingest(&s, Channel::App, &[mark("m1", p["a"], true)])
        .await
        .unwrap();
    assert_eq!(undo.accepted, 1);
    let more = g
        .ingest(
            &s,
            Channel::App,
            &[mark("m1", p["a"], false), mark("m3", p["e"], false)],
        )
        .await
        .unwrap();
    let o: Vec<_> = more.results.iter().map(|x| x.outcome).collect();
    assert_eq!(o, ["duplicate", "accepted"]);
    assert_eq!(db.store.report_rows().await.unwrap(), 4);
    assert_eq!(voted(&g).await, 3, "b, d and e; a's only report is undone");
}

/// (county, precinct, polling place, a count, another count).
type Row = (String, String, String, i64, i64);

/// Cells sorted, and hour cells folded per (county, precinct, place, hour), sorted.
fn folded(
    (cells, hours): (
        Vec<narwhal_store::turnout_live::Cell>,
        Vec<narwhal_store::turnout_live::HourCell>,
    ),
) -> (Vec<Row>, Vec<Row>) {
    let mut c: Vec<_> = cells
        .into_iter()
        .map(|c| (c.county, c.precinct, c.polling_place, c.universe, c.voted))
        .collect();
    c.sort();
    let mut h: std::collections::BTreeMap<(String, String, String, i64), i64> = Default::default();
    for x in hours {
        *h.entry((x.county, x.precinct, x.polling_place, x.hour))
            .or_default() += x.voted;
    }
    let h = h
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|((a, b, c, d), v)| (a, b, c, d, v))
        .collect();
    (c, h)
}

async fn tallies_agree_with_a_scan_of_the_universe(db: TestDb) {
    // The live figures read tallies the triggers keep; after reports stamped in
    // several hours (before the polls opened too), a voted time moved earlier by a
    // second report, undos and a tombstone, they equal a scan of the universe.
    let (t, p) = setup(&db).await;
    let hour = 3_600_000i64;
    let now = narwhal_store::now_ms();
    let opens = now - now.rem_euclid(hour) - 3 * hour;
    let at = |rid: &str, who: &str, t: i64, undo: bool| ReportItem {
        voted_at: Some(t),
        ..mark(rid, p[who], undo)
    };
    let s = Reporter::Staff;
    for batch in [
        vec![
            at("t1", "a", opens - 2 * hour, false),
            at("t2", "b", opens + hour / 2, false),
            at("t3", "c", opens + 2 * hour + 5, false),
            at("t4", "d", now, false),
        ],
        vec![
            at("t5", "c", opens + 10, false),
            at("t6", "e", opens + hour, false),
        ],
        vec![at("t4", "d", now, true), at("t7", "e", opens, true)],
        vec![
            at("t7", "e", opens, false),
            at("t6", "e", opens + hour, true),
        ],
    ] {
        t.ingest(&s, Channel::Bulk, &batch).await.unwrap();
    }
    for opens_at in [opens, opens + hour, opens - 5 * hour] {
        let fast = folded(db.store.turnout_cells(opens_at).await.unwrap());
        let scan = folded(db.store.turnout_cells_by_scan(opens_at).await.unwrap());
        assert_eq!(fast, scan, "opens_at {opens_at}");
    }
    let (cells, _) = folded(db.store.turnout_cells(opens).await.unwrap());
    let voted: i64 = cells.iter().map(|c| c.4).sum();
    assert_eq!(voted, 3, "a, b and c voted; d and e were undone");
}

both_backends!(
    tallies_agree_with_a_scan_of_the_universe,
    voted_follows_reports_undo_and_the_clock,
    concurrent_batches_keep_counts_exact,
    lists_flush_and_export,
    early_vote_pre_flushes_once,
    a_report_on_another_node_is_seen_within_a_second,
    group_commit_gives_each_batch_its_own_outcomes,
    group_commit_answers_retries_as_the_database_does,
);
