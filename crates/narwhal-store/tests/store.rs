//! Storage behaviour, run on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{PersonId, Role, Scope, SegmentFilter};
use narwhal_store::audit::AuditEntry;
use narwhal_store::people::{ChangeSet, NewPerson, PersonRow, PersonUpdate};
use narwhal_store::test_support::TestDb;
use narwhal_store::{both_backends, StoreError};
use serde_json::json;

fn person(
    voter: &str,
    first: &str,
    last: &str,
    email: Option<&str>,
    state: &str,
    county: &str,
) -> NewPerson {
    NewPerson {
        row: PersonRow {
            voter_id: Some(voter.into()),
            first_name: Some(first.into()),
            last_name: Some(last.into()),
            search_name: format!("{} {}", first.to_lowercase(), last.to_lowercase()),
            email: email.map(String::from),
            state: Some(state.into()),
            county: Some(county.into()),
            email_consent: if email.is_some() {
                "subscribed".into()
            } else {
                "unknown".into()
            },
            sms_consent: "unknown".into(),
            row_hash: 7,
            custom: json!({"county_code": county})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        },
        custom_json: None,
        emails: email.map(String::from).into_iter().collect(),
        phones: vec![],
        tags: vec!["voter".into()],
    }
}

async fn insert(db: &TestDb, people: Vec<NewPerson>) -> Vec<PersonId> {
    let n = people.len();
    let cs = ChangeSet {
        source: Some("test".into()),
        inserts: people,
        audit: (0..n)
            .map(|i| {
                AuditEntry::new(
                    "test",
                    "person.create",
                    "person",
                    format!("#{i}"),
                    json!({"n": i}),
                )
            })
            .collect(),
        ..Default::default()
    };
    db.store.apply_changes(&cs).await.unwrap()
}

async fn inserts_and_finds_by_keys(db: TestDb) {
    // Ada's custom fields come rendered by the caller, as an import renders them:
    // stored as given.
    let mut ada = person(
        "V1",
        "Ada",
        "Lovelace",
        Some("ada@example.org"),
        "OH",
        "FRANKLIN",
    );
    ada.row.custom.clear();
    ada.custom_json = Some(r#"{"county_code":"FRANKLIN"}"#.into());
    let ids = insert(
        &db,
        vec![ada, person("V2", "Alan", "Turing", None, "OH", "DELAWARE")],
    )
    .await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let m = db
        .store
        .find_by_keys(
            &["V1".into(), "V9".into()],
            &["ada@example.org".into()],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(m.voter.get("V1").map(|x| x.0), Some(ids[0]));
    assert!(!m.voter.contains_key("V9"));
    assert_eq!(m.email.get("ada@example.org").map(|x| x.0), Some(ids[0]));
    let p = db.store.get_person(ids[0]).await.unwrap();
    assert_eq!(p.row.first_name.as_deref(), Some("Ada"));
    assert_eq!(p.row.custom.get("county_code"), Some(&json!("FRANKLIN")));
    let alan = db.store.get_person(ids[1]).await.unwrap();
    assert_eq!(alan.row.custom.get("county_code"), Some(&json!("DELAWARE")));
    // Custom fields given both ways are refused, not half stored.
    let mut twice = person("V3", "Grace", "Hopper", None, "OH", "FRANKLIN");
    twice.custom_json = Some(r#"{"x":"1"}"#.into());
    let cs = ChangeSet {
        inserts: vec![twice],
        ..Default::default()
    };
    assert!(db.store.apply_changes(&cs).await.is_err());
    assert!(db
        .store
        .find_by_keys(&["V3".into()], &[], &[])
        .await
        .unwrap()
        .voter
        .is_empty());
    assert_eq!(p.tags, vec!["voter"]);
    assert_eq!(p.emails, vec!["ada@example.org"]);
    // Search by name prefix, email and voter id.
    assert_eq!(
        db.store
            .search_people("ada lov", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        db.store.search_people("turing", None, 10).await.unwrap()[0].id,
        ids[1]
    );
    assert_eq!(
        db.store
            .search_people("ADA@example.org", None, 10)
            .await
            .unwrap()[0]
            .id,
        ids[0]
    );
    assert_eq!(
        db.store.search_people("v2", None, 10).await.unwrap().len(),
        1,
        "voter ids match case-insensitively"
    );
    assert_eq!(
        db.store.search_people("V2", None, 10).await.unwrap()[0].id,
        ids[1]
    );
    // Audit entries got the real ids.
    let log = db
        .store
        .audit_log(Some(("person", &ids[1].to_string())), None, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].entry.action, "person.create");
    assert_eq!(
        log[0].entry.detail,
        json!({"n": 1}),
        "each entry keeps its own detail"
    );
    // One statement writes a batch's entries, in the batch's order.
    let all = db
        .store
        .audit_log(Some(("person", &ids[0].to_string())), None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].entry.detail, json!({"n": 0}));
    assert!(
        all[0].id < log[0].id,
        "entries are stored in the batch's order"
    );
}

async fn duplicate_voter_id_is_a_conflict_and_writes_nothing(db: TestDb) {
    insert(&db, vec![person("V1", "A", "B", None, "OH", "X")]).await;
    let cs = ChangeSet {
        inserts: vec![
            person("V3", "C", "D", None, "OH", "X"),
            person("V1", "E", "F", None, "OH", "X"),
        ],
        ..Default::default()
    };
    let err = db.store.apply_changes(&cs).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        db.store.count_people().await.unwrap(),
        1,
        "the batch is all or nothing"
    );
    // A new person's email or phone that someone holds is a conflict too, however
    // the backend writes new keys (COPY on PostgreSQL), and nothing is written.
    insert(
        &db,
        vec![person("V2", "G", "H", Some("g@example.org"), "OH", "X")],
    )
    .await;
    let mut phoned = person("V4", "I", "J", None, "OH", "X");
    phoned.phones = vec!["+16145550100".into()];
    insert(&db, vec![phoned]).await;
    let mut takes_phone = person("V6", "M", "N", None, "OH", "X");
    takes_phone.phones = vec!["+16145550100".into()];
    for taker in [
        person("V5", "K", "L", Some("g@example.org"), "OH", "X"),
        takes_phone,
    ] {
        let cs = ChangeSet {
            inserts: vec![
                person("V7", "O", "P", Some("o@example.org"), "OH", "X"),
                taker,
            ],
            ..Default::default()
        };
        let err = db.store.apply_changes(&cs).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(db.store.count_people().await.unwrap(), 3);
    }
}

async fn updates_are_version_guarded(db: TestDb) {
    let ids = insert(&db, vec![person("V1", "Ada", "L", None, "OH", "X")]).await;
    let p = db.store.get_person(ids[0]).await.unwrap();
    let mut row = p.row.clone();
    row.first_name = Some("Augusta".into());
    let upd = |v| ChangeSet {
        updates: vec![PersonUpdate {
            id: ids[0],
            expected_version: v,
            row: row.clone(),
            add_emails: vec!["aug@example.org".into()],
            add_phones: vec![],
            add_tags: vec!["donor".into()],
            remove_tags: vec!["voter".into()],
            changed: vec!["first_name".into()],
        }],
        ..Default::default()
    };
    db.store.apply_changes(&upd(p.version)).await.unwrap();
    let err = db.store.apply_changes(&upd(p.version)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)));
    let p2 = db.store.get_person(ids[0]).await.unwrap();
    assert_eq!(p2.row.first_name.as_deref(), Some("Augusta"));
    assert_eq!(p2.version, p.version + 1);
    assert_eq!(p2.tags, vec!["donor"]);
    assert_eq!(p2.emails, vec!["aug@example.org"]);
}

async fn merge_and_undo_restore_both(db: TestDb) {
    let ids = insert(
        &db,
        vec![
            person("V1", "Ada", "Lovelace", None, "OH", "FRANKLIN"),
            NewPerson {
                row: PersonRow {
                    voter_id: None,
                    first_name: Some("A.".into()),
                    email: Some("ada@example.org".into()),
                    email_consent: "unsubscribed".into(),
                    sms_consent: "unknown".into(),
                    custom: json!({"employer": "Analytical Engines"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                },
                // Stored from `row.custom`.
                custom_json: None,
                emails: vec!["ada@example.org".into()],
                phones: vec!["+16145550100".into()],
                tags: vec!["donor".into()],
            },
        ],
    )
    .await;
    let list = db.store.create_list("Donors", "", "test").await.unwrap();
    db.store.add_to_list(list, &[ids[1]], "test").await.unwrap();
    let before = db.store.get_person(ids[0]).await.unwrap();
    let merge = db
        .store
        .merge_people(ids[0], ids[1], "same email", "user:staff")
        .await
        .unwrap();
    let merged = db.store.get_person(ids[0]).await.unwrap();
    assert!(db.store.get_person(ids[1]).await.is_err());
    assert_eq!(
        merged.row.first_name.as_deref(),
        Some("Ada"),
        "survivor's values win"
    );
    assert_eq!(
        merged.row.email.as_deref(),
        Some("ada@example.org"),
        "gaps filled from the other"
    );
    assert_eq!(
        merged.row.email_consent, "unsubscribed",
        "an unsubscribe survives a merge"
    );
    assert_eq!(merged.tags, vec!["donor", "voter"]);
    assert_eq!(
        merged.row.custom,
        *json!({"county_code": "FRANKLIN", "employer": "Analytical Engines"})
            .as_object()
            .unwrap(),
        "custom fields from both"
    );
    assert_eq!(
        db.store.list_members(list, None, 10).await.unwrap()[0].id,
        ids[0]
    );
    let m = db
        .store
        .find_by_keys(&[], &["ada@example.org".into()], &["+16145550100".into()])
        .await
        .unwrap();
    assert_eq!(m.email["ada@example.org"].0, ids[0]);

    db.store.undo_merge(merge, "user:staff").await.unwrap();
    let a = db.store.get_person(ids[0]).await.unwrap();
    let b = db.store.get_person(ids[1]).await.unwrap();
    assert_eq!(a.row, before.row);
    assert_eq!(a.tags, vec!["voter"]);
    assert_eq!(b.emails, vec!["ada@example.org"]);
    assert_eq!(b.phones, vec!["+16145550100"]);
    assert_eq!(b.tags, vec!["donor"]);
    assert_eq!(
        db.store.list_members(list, None, 10).await.unwrap()[0].id,
        ids[1]
    );
    assert!(
        db.store.undo_merge(merge, "x").await.is_err(),
        "undo twice is refused"
    );
    let merges = db.store.merges_of(ids[1]).await.unwrap();
    assert!(merges[0].undone_at.is_some());
}

async fn segments_count_and_page(db: TestDb) {
    let mut people = Vec::new();
    for i in 0..30 {
        let county = if i % 3 == 0 { "FRANKLIN" } else { "DELAWARE" };
        let email = format!("p{i}@example.org");
        let mut p = person(
            &format!("V{i}"),
            "P",
            &format!("N{i}"),
            (i % 2 == 0).then_some(email.as_str()),
            "OH",
            county,
        );
        p.row
            .custom
            .insert("party".into(), json!(if i % 5 == 0 { "D" } else { "R" }));
        if i % 4 == 0 {
            p.tags.push("donor".into());
        }
        people.push(p);
    }
    insert(&db, people).await;
    let count = |f: serde_json::Value| {
        let f = SegmentFilter::parse(&f).unwrap();
        let s = db.store.clone();
        async move { s.count_matching(&f).await.unwrap() }
    };
    assert_eq!(count(json!({"county":"franklin"})).await, 10);
    assert_eq!(
        count(json!({"all":[{"county":"FRANKLIN"},"has_email"]})).await,
        5
    );
    assert_eq!(
        count(json!({"consent":{"channel":"email","state":"subscribed"}})).await,
        15
    );
    assert_eq!(
        count(json!({"field":{"key":"party","op":"eq","value":"D"}})).await,
        6
    );
    assert_eq!(count(json!({"not":{"tag":"voter"}})).await, 0);
    // Tags held by some: people 0, 4, 8, ... (8 of 30), 3 of them in FRANKLIN (0, 12, 24).
    assert_eq!(count(json!({"tag":"donor"})).await, 8);
    assert_eq!(
        count(json!({"all":[{"county":"FRANKLIN"},{"not":{"tag":"donor"}}]})).await,
        7
    );
    // A tag no one was ever given matches no one, and its negation everyone.
    assert_eq!(count(json!({"tag":"never-given"})).await, 0);
    assert_eq!(count(json!({"not":{"tag":"never-given"}})).await, 30);
    assert_eq!(
        count(json!({"any":[{"state":"NY"},{"tag":"voter"}]})).await,
        30
    );
    let f = SegmentFilter::parse(&json!({"county":"DELAWARE"})).unwrap();
    let first = db.store.page_matching(&f, None, 15).await.unwrap();
    let rest = db
        .store
        .page_matching(&f, first.last().map(|p| p.id), 15)
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 20);
    let id = db.store.create_segment("Delaware", &f).await.unwrap();
    assert!(matches!(
        db.store.create_segment("Delaware", &f).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(db.store.segment(id).await.unwrap().filter, f);
}

async fn jobs_lease_and_recover(db: TestDb) {
    let id = db
        .store
        .enqueue_job("t.work", &json!({"n": 1}))
        .await
        .unwrap();
    let a = db
        .store
        .claim_job(&["t.work"], "node-a", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.id, id);
    assert!(
        db.store
            .claim_job(&["t.work"], "node-b", 60_000)
            .await
            .unwrap()
            .is_none(),
        "leased job is not claimable"
    );
    // node-a dies; its lease is short and runs out.
    db.store
        .heartbeat_job(id, "node-a", -1, 5, 10)
        .await
        .unwrap();
    let b = db
        .store
        .claim_job(&["t.work"], "node-b", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.id, id);
    assert_eq!(b.attempts, 2);
    assert!(
        !db.store
            .heartbeat_job(id, "node-a", 60_000, 6, 10)
            .await
            .unwrap(),
        "the old owner lost its lease"
    );
    assert!(!db
        .store
        .complete_job(id, "node-a", &json!({}))
        .await
        .unwrap());
    assert!(db
        .store
        .complete_job(id, "node-b", &json!({"ok": true}))
        .await
        .unwrap());
    assert_eq!(db.store.job(id).await.unwrap().state, "done");
    // Failures retry, then give up.
    let id2 = db.store.enqueue_job("t.work", &json!({})).await.unwrap();
    db.store
        .claim_job(&["t.work"], "n", 1000)
        .await
        .unwrap()
        .unwrap();
    db.store.fail_job(id2, "n", "boom", 0, false).await.unwrap();
    assert_eq!(db.store.job(id2).await.unwrap().state, "queued");
    db.store
        .claim_job(&["t.work"], "n", 1000)
        .await
        .unwrap()
        .unwrap();
    db.store
        .fail_job(id2, "n", "bad input", 0, true)
        .await
        .unwrap();
    assert_eq!(db.store.job(id2).await.unwrap().state, "failed");
    // Requeued work does not spend its attempts: many interruptions, still queued.
    let id3 = db
        .store
        .enqueue_job("t.resumable", &json!({}))
        .await
        .unwrap();
    for _ in 0..10 {
        let job = db
            .store
            .claim_job(&["t.resumable"], "n", 1000)
            .await
            .unwrap()
            .expect("queued again");
        assert_eq!(job.id, id3);
        assert!(db
            .store
            .requeue_job(id3, "n", "db blinked", 0)
            .await
            .unwrap());
        // Only the owner can requeue.
        assert!(!db.store.requeue_job(id3, "other", "x", 0).await.unwrap());
    }
    assert_eq!(db.store.job(id3).await.unwrap().state, "queued");
}

async fn concurrent_claims_never_share_a_job(db: TestDb) {
    for i in 0..20 {
        db.store
            .enqueue_job("t.race", &json!({ "i": i }))
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for w in 0..4 {
        let s = db.store.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(j) = s
                .claim_job(&["t.race"], &format!("w{w}"), 60_000)
                .await
                .unwrap()
            {
                got.push(j.id.0);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, 20);
    assert_eq!(all.len(), 20);
}

async fn inbound_is_idempotent_and_queued(db: TestDb) {
    let (a, new_a) = db
        .store
        .receive_inbound("crm", "k1", &json!({"x": 1}))
        .await
        .unwrap();
    let (b, new_b) = db
        .store
        .receive_inbound("crm", "k1", &json!({"x": 2}))
        .await
        .unwrap();
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    assert_eq!(
        db.store.inbound(a).await.unwrap().payload,
        json!({"x": 1}),
        "the first payload is kept"
    );
    let job = db
        .store
        .claim_job(&["inbound.person"], "w", 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.payload["inbound_id"], json!(a.0));
    assert!(
        db.store
            .claim_job(&["inbound.person"], "w", 1000)
            .await
            .unwrap()
            .is_none(),
        "one job per payload"
    );
}

async fn users_tokens_sessions(db: TestDb) {
    let uid = db
        .store
        .create_user("organizer", "hash", Role::Staff)
        .await
        .unwrap();
    assert!(matches!(
        db.store.create_user("organizer", "h", Role::Admin).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        db.store
            .user_by_name("organizer")
            .await
            .unwrap()
            .unwrap()
            .id,
        uid
    );
    let tid = db
        .store
        .create_token("crm", "th", &[Scope::PeopleRead], "admin")
        .await
        .unwrap();
    assert_eq!(
        db.store.token_by_hash("th").await.unwrap().unwrap().scopes,
        vec![Scope::PeopleRead]
    );
    db.store.revoke_token(tid).await.unwrap();
    assert!(db.store.token_by_hash("th").await.unwrap().is_none());
    db.store.create_session("sh", uid, 60_000).await.unwrap();
    assert_eq!(
        db.store.session_user("sh").await.unwrap().unwrap().username,
        "organizer"
    );
    db.store.create_session("old", uid, -1).await.unwrap();
    assert!(db.store.session_user("old").await.unwrap().is_none());
}

async fn migrate_twice_is_a_no_op(db: TestDb) {
    assert_eq!(db.store.migrate().await.unwrap(), 0);
    db.store.ping().await.unwrap();
}

both_backends!(
    inserts_and_finds_by_keys,
    duplicate_voter_id_is_a_conflict_and_writes_nothing,
    updates_are_version_guarded,
    merge_and_undo_restore_both,
    segments_count_and_page,
    jobs_lease_and_recover,
    concurrent_claims_never_share_a_job,
    inbound_is_idempotent_and_queued,
    users_tokens_sessions,
    migrate_twice_is_a_no_op,
);

#[tokio::test]
async fn sqlite_backup_is_a_readable_copy() {
    let db = TestDb::new(narwhal_store::Backend::Sqlite).await.unwrap();
    insert(&db, vec![person("V1", "A", "B", None, "OH", "X")]).await;
    let dest = db.dir.as_ref().unwrap().path().join("backup.db");
    db.store.backup_sqlite(&dest).await.unwrap();
    assert!(
        db.store.backup_sqlite(&dest).await.is_err(),
        "never overwrites"
    );
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(&dest, dir2.path().join("narwhal.db")).unwrap();
    let copy = narwhal_store::Store::open(&narwhal_store::DatabaseTarget::SqliteDir(
        dir2.path().into(),
    ))
    .await
    .unwrap();
    assert_eq!(copy.count_people().await.unwrap(), 1);
}
