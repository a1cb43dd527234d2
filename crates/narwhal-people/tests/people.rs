//! Imports, identity resolution and inbound processing, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{Email, PersonDraft, PhoneE164, VoterId};
use narwhal_people::import::{self, ImportError, ImportOptions};
use narwhal_people::mapping::Mapping;
use narwhal_people::{synth, Hub, Outcome};
use narwhal_store::both_backends;
use narwhal_store::test_support::TestDb;
use std::path::{Path, PathBuf};

const MAPPING: &str = r#"
[source]
name = "county-file"
[fields]
voter_id = "VOTER ID"
first_name = "First"
last_name = "Last"
email = "Email"
phone = "Phone"
state = "State"
county = "County"
[custom]
party = "Party"
[tags]
always = ["voter"]
[defaults]
state = "OH"
"#;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

async fn import(
    db: &TestDb,
    path: &Path,
    mapping: &str,
) -> Result<narwhal_store::imports::ImportCounts, ImportError> {
    let hub = Hub::new(db.store.clone());
    let m = Mapping::parse(mapping).unwrap();
    let mut opts = ImportOptions::beside(path);
    opts.batch_rows = 3;
    import::run(&hub, path, &m, &opts, "test", &|_| {}).await
}

fn rejects(path: &Path) -> Vec<(u64, String)> {
    let mut r = csv::Reader::from_path(ImportOptions::beside(path).rejects_path).unwrap();
    r.records()
        .map(|x| x.unwrap())
        .map(|x| (x[0].parse().unwrap(), x[1].to_string()))
        .collect()
}

async fn import_rejects_bad_rows_with_line_and_reason(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut body = b"VOTER ID,First,Last,Email,Phone,State,County,Party\n".to_vec();
    body.extend_from_slice(b"OH1,Ada,Lovelace,ada@example.org,614-555-0101,,Franklin,D\n"); // line 2 ok
    body.extend_from_slice(b"OH2,Alan,Turing,not-an-email,,,Franklin,R\n"); // 3 bad email
    body.extend_from_slice(b"OH3,Grace,Hopper,,12,,Franklin,R\n"); // 4 bad phone
    body.extend_from_slice(b"OH4,Too,Few\n"); // 5 missing columns
    body.extend_from_slice(b"OH5,Too,Many,,,,Franklin,D,extra\n"); // 6 extra column
    body.extend_from_slice(b"OH6,Bad\xff\xfeUtf8,X,,,,Franklin,D\n"); // 7 bad UTF-8
    body.extend_from_slice(b",No,Keys,,,,Franklin,D\n"); // 8 no strong key
    body.extend_from_slice(b"OH7,\"Quoted, Name\",Smith,,,,Franklin,D\n"); // 9 ok: quoted comma
    body.extend_from_slice(b"OH8,Bro\"ken,Quote,,,,Franklin,D\n"); // 10 stray quote mid-field: kept literally
    body.extend_from_slice(b"OH9,Big,");
    body.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    body.extend_from_slice(b",,,,Franklin,D\n"); // 11 a 10 MB line
    body.extend_from_slice(b"OH10,Last,Row,,,XX,Franklin,D\n"); // 12 bad state
    let path = write(dir.path(), "voters.csv", &body);
    let c = import(&db, &path, MAPPING).await.unwrap();
    assert_eq!(c.rows_read, 11);
    assert_eq!(c.inserted, 3, "{c:?}");
    assert_eq!(c.rejected, 8);
    let r = rejects(&path);
    let lines: Vec<u64> = r.iter().map(|x| x.0).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 11, 12]);
    assert!(
        r[0].1.contains("column Email") && r[0].1.contains("email"),
        "{}",
        r[0].1
    );
    assert!(r[1].1.contains("column Phone"), "{}", r[1].1);
    assert!(r[2].1.contains("expected 8 fields, found 3"), "{}", r[2].1);
    assert!(r[3].1.contains("found 9"), "{}", r[3].1);
    assert!(
        r[4].1.contains("invalid UTF-8 in column First"),
        "{}",
        r[4].1
    );
    assert!(r[5].1.contains("no voter id, email or phone"), "{}", r[5].1);
    assert!(r[6].1.contains("over the"), "{}", r[6].1);
    assert!(r[7].1.contains("state"), "{}", r[7].1);
    let p = db.store.search_people("OH7", None, 5).await.unwrap();
    assert_eq!(p[0].first_name.as_deref(), Some("Quoted, Name"));
    let ada = db
        .store
        .search_people("ada@example.org", None, 5)
        .await
        .unwrap();
    assert_eq!(ada[0].phone.as_deref(), Some("+16145550101"));
    assert_eq!(ada[0].state.as_deref(), Some("OH"), "default state applied");
    assert_eq!(ada[0].county.as_deref(), Some("FRANKLIN"));
}

async fn whole_file_errors_name_the_file_and_write_nothing(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.csv", b"");
    let e = import(&db, &empty, MAPPING).await.unwrap_err().to_string();
    assert!(e.contains("empty.csv") && e.contains("empty"), "{e}");
    let wrong = write(dir.path(), "wrong.csv", b"ID,Name\n1,x\n");
    let e = import(&db, &wrong, MAPPING).await.unwrap_err().to_string();
    assert!(
        e.contains("wrong.csv: line 1") && e.contains("VOTER ID"),
        "{e}"
    );
    let missing = dir.path().join("missing.csv");
    let e = import(&db, &missing, MAPPING)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.csv: cannot open"), "{e}");
    assert_eq!(db.store.count_people().await.unwrap(), 0);
}

async fn reimport_changes_nothing_and_tsv_latin1_work(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "voters.tsv",
        b"VOTER ID\tFirst\tLast\tEmail\tPhone\tState\tCounty\tParty\nOH1\tJos\xe9\tN\xfa\xf1ez\t\t\tOH\tLucas\tD\nOH2\tAmy\tLi\tamy@example.org\t\tOH\tLucas\tR\n",
    );
    let latin = MAPPING.replace(
        "name = \"county-file\"",
        "name = \"county-file\"\nencoding = \"latin1\"",
    );
    let c1 = import(&db, &path, &latin).await.unwrap();
    assert_eq!((c1.inserted, c1.rejected), (2, 0));
    let before = db.store.audit_log(None, None, 100).await.unwrap().len();
    let c2 = import(&db, &path, &latin).await.unwrap();
    assert_eq!((c2.inserted, c2.updated, c2.unchanged), (0, 0, 2));
    assert_eq!(
        db.store.audit_log(None, None, 100).await.unwrap().len(),
        before,
        "a re-import writes no changes"
    );
    let p = db.store.search_people("OH1", None, 1).await.unwrap();
    assert_eq!(p[0].first_name.as_deref(), Some("José"));
    assert_eq!(p[0].last_name.as_deref(), Some("Núñez"));
    // Without latin1 the same bytes are rejected, not mangled.
    let c3 = import(&db, &path, MAPPING).await.unwrap();
    assert_eq!(c3.rejected, 1);
}

async fn sources_resolve_to_one_person_with_provenance(db: TestDb) {
    let hub = Hub::new(db.store.clone());
    let voter = PersonDraft {
        voter_id: Some(VoterId::parse("OH1").unwrap()),
        ..Default::default()
    };
    let a = hub.upsert(voter, "voter-file", "test").await.unwrap();
    let crm = PersonDraft {
        emails: vec![Email::parse("Ada@Example.org").unwrap()],
        phones: vec![PhoneE164::parse("(614) 555-0101").unwrap()],
        ..Default::default()
    };
    let b = hub.upsert(crm, "crm", "test").await.unwrap();
    assert_eq!(b.outcome, Outcome::Created);
    assert_ne!(a.id, b.id);
    // A record carrying both the voter id and the email proves they are one person.
    let both = PersonDraft {
        voter_id: Some(VoterId::parse("oh1").unwrap()),
        emails: vec![Email::parse("ada@example.org").unwrap()],
        name: narwhal_domain::person::PersonNameFields {
            first_name: Some(" Ada ".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let c = hub.upsert(both, "signup-form", "test").await.unwrap();
    assert_eq!(c.id, a.id);
    assert_eq!(c.merged, vec![b.id]);
    let p = db.store.get_person(a.id).await.unwrap();
    assert_eq!(p.phones, vec!["+16145550101"]);
    assert_eq!(p.row.first_name.as_deref(), Some("Ada"));
    assert_eq!(
        narwhal_people::resolve::provenance_of(&p.row, "voter_id").unwrap()["source"],
        "voter-file"
    );
    assert_eq!(p.row.provenance["first_name"]["source"], "signup-form");
    assert_eq!(db.store.count_people().await.unwrap(), 1);
    // Different voter ids are never merged, even when they share a phone.
    let other = PersonDraft {
        voter_id: Some(VoterId::parse("OH2").unwrap()),
        phones: vec![PhoneE164::parse("614 555 0101").unwrap()],
        ..Default::default()
    };
    let d = hub.upsert(other, "voter-file", "test").await.unwrap();
    assert_ne!(d.id, a.id);
    assert!(d.merged.is_empty());
    // And the merge can be undone.
    let m = db.store.merges_of(a.id).await.unwrap();
    db.store.undo_merge(m[0].id, "test").await.unwrap_err(); // survivor changed since: refused
}

async fn inbound_payloads_become_people_once(db: TestDb) {
    let hub = Hub::new(db.store.clone());
    let body = serde_json::json!({"emails":["x@example.org"],"first_name":"X"});
    let (id, _) = db.store.receive_inbound("crm", "k1", &body).await.unwrap();
    db.store.receive_inbound("crm", "k1", &body).await.unwrap();
    let r = narwhal_people::worker::process_inbound(&hub, id)
        .await
        .unwrap();
    assert_eq!(r["outcome"], "created");
    let again = narwhal_people::worker::process_inbound(&hub, id)
        .await
        .unwrap();
    assert_eq!(again["skipped"], "processed");
    assert_eq!(db.store.count_people().await.unwrap(), 1);
    let (bad, _) = db
        .store
        .receive_inbound("crm", "k2", &serde_json::json!({"shoe": 1}))
        .await
        .unwrap();
    narwhal_people::worker::process_inbound(&hub, bad)
        .await
        .unwrap();
    let stored = db.store.inbound(bad).await.unwrap();
    assert_eq!(stored.state, "rejected");
    assert!(stored.error.unwrap().contains("unknown field"));
}

async fn queued_import_job_runs_on_the_worker(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.csv");
    synth::write_csv(&path, 1, 500, &|_| {}).unwrap();
    let id = import::start_import(&db.store, "", &path, synth::MAPPING, "user:staff")
        .await
        .unwrap();
    let hub = Hub::new(db.store.clone());
    let job = db
        .store
        .claim_job(narwhal_people::worker::KINDS, "node-1", 60_000)
        .await
        .unwrap()
        .unwrap();
    narwhal_people::worker::run_job(&hub, &job, "node-1", 60_000)
        .await
        .unwrap();
    let run = db.store.import_run(id).await.unwrap();
    assert_eq!(run.state, "done");
    assert_eq!(run.counts.rows_read, 500);
    assert_eq!(run.counts.inserted + run.counts.merged, 500);
    assert_eq!(db.store.count_people().await.unwrap(), run.counts.inserted);
    let bad = import::start_import(
        &db.store,
        "",
        &path,
        "[source]\nname='x'\n[fields]\nbogus='y'\n",
        "u",
    )
    .await;
    assert!(bad.is_err());
}

async fn concurrent_writers_never_duplicate_a_person(db: TestDb) {
    // Two nodes receive the same new supporters at the same moment.
    let drafts = |offset: usize| -> Vec<PersonDraft> {
        (0..200)
            .map(|i| PersonDraft {
                emails: vec![
                    Email::parse(&format!("s{}@example.org", (i + offset) % 200)).unwrap(),
                ],
                ..Default::default()
            })
            .collect()
    };
    let mut handles = Vec::new();
    for w in 0..4 {
        let hub = Hub::new(db.store.clone());
        let batch = drafts(w * 37);
        handles.push(tokio::spawn(async move {
            for chunk in batch.chunks(50) {
                hub.upsert_batch(chunk.to_vec(), "signup", "test", false)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(db.store.count_people().await.unwrap(), 200);
    let m = db
        .store
        .find_by_keys(
            &[],
            &(0..200)
                .map(|i| format!("s{i}@example.org"))
                .collect::<Vec<_>>(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(m.email.len(), 200, "every email belongs to someone");
}

/// Batches are converted on several threads and two are written at a time: a person
/// named in many batches (by voter id, then by email alone) is still one person.
async fn keys_shared_across_parallel_batches_make_one_person(db: TestDb) {
    shared_keys_make_one_person(db, 100_000).await;
}

/// The same with the hub's keys held in memory (a large import): a batch that the
/// index sends to create a person another batch in flight created is resolved again.
async fn keys_shared_across_batches_with_the_key_index(db: TestDb) {
    shared_keys_make_one_person(db, 1).await;
}

async fn shared_keys_make_one_person(db: TestDb, bulk_from_rows: u64) {
    let import = |db: &TestDb, path: &Path| {
        let hub = Hub::new(db.store.clone());
        let mut opts = ImportOptions::beside(path);
        opts.batch_rows = 3;
        opts.bulk_from_rows = bulk_from_rows;
        let path = path.to_path_buf();
        async move {
            let m = Mapping::parse(MAPPING).unwrap();
            import::run(&hub, &path, &m, &opts, "test", &|_| {}).await
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut body = b"VOTER ID,First,Last,Email,Phone,State,County,Party\n".to_vec();
    for i in 1..=20 {
        // Row i names person OH1 again every 4th row, with a first name of its own.
        let (vid, email) = if i % 4 == 1 {
            ("OH1".to_string(), "one@example.org".to_string())
        } else {
            (format!("OH{}", 100 + i), String::new())
        };
        body.extend_from_slice(format!("{vid},Name{i},Last,{email},,,Franklin,D\n").as_bytes());
    }
    // A row with only the shared email, after every batch that saw it: no new person.
    body.extend_from_slice(b",Final,Last,one@example.org,,,Franklin,D\n");
    let path = write(dir.path(), "order.csv", &body);
    let c = import(&db, &path).await.unwrap();
    assert_eq!(c.rows_read, 21);
    assert_eq!(c.rejected, 0);
    assert_eq!(db.store.count_people().await.unwrap(), 16, "{c:?}");
    let p = db.store.search_people("OH1", None, 5).await.unwrap();
    assert_eq!(p.len(), 1);
    // Which row's name is kept depends on which of two batches in flight commits
    // last (a conflict retries one); it is always one of the file's.
    let name = p[0].first_name.clone().unwrap();
    assert!(name == "Final" || name.starts_with("Name"), "{name}");
    let by_email = db
        .store
        .search_people("one@example.org", None, 5)
        .await
        .unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].id, p[0].id);
    // Running it again finds everyone (the file names one person five times with
    // different names, so that person is updated, but nobody is created).
    let again = import(&db, &path).await.unwrap();
    assert_eq!(again.inserted + again.merged, 0, "{again:?}");
    assert_eq!(db.store.count_people().await.unwrap(), 16);
}

/// A large import (its keys held in memory) resolves records as the database would:
/// people created elsewhere are found by any key, new ones are created once, and a
/// second run changes nothing.
async fn a_large_import_resolves_from_memory_as_from_the_database(db: TestDb) {
    let hub = Hub::new(db.store.clone());
    let signup = PersonDraft {
        emails: vec![Email::parse("ada@example.org").unwrap()],
        ..Default::default()
    };
    let ada = hub.upsert(signup, "signup", "test").await.unwrap().id;
    let voter = PersonDraft {
        voter_id: Some(VoterId::parse("OH2").unwrap()),
        ..Default::default()
    };
    let bo = hub.upsert(voter, "county-file", "test").await.unwrap().id;
    let dir = tempfile::tempdir().unwrap();
    let body = b"VOTER ID,First,Last,Email,Phone,State,County,Party
OH1,Ada,Lovelace,ada@example.org,,OH,Franklin,D
OH2,Bo,Diddley,bo@example.org,,OH,Franklin,D
OH3,Cy,Young,,614-555-0103,OH,Lucas,R
OH4,Di,Prince,di@example.org,,OH,Lucas,R
OH5,Ed,Wood,,,OH,Lucas,R
OH6,Flo,Jo,,,OH,Lucas,R
OH7,Gus,Grissom,,614-555-0107,OH,Lucas,R
";
    let path = write(dir.path(), "voters.csv", body);
    let run = || {
        let hub = hub.clone();
        let path = path.clone();
        async move {
            let m = Mapping::parse(MAPPING).unwrap();
            let mut opts = ImportOptions::beside(&path);
            opts.batch_rows = 3;
            opts.bulk_from_rows = 1;
            import::run(&hub, &path, &m, &opts, "test", &|_| {})
                .await
                .unwrap()
        }
    };
    let c = run().await;
    assert_eq!((c.inserted, c.updated, c.merged), (5, 2, 0), "{c:?}");
    assert_eq!(db.store.count_people().await.unwrap(), 7);
    let a = db.store.get_person(ada).await.unwrap();
    assert_eq!(a.row.voter_id.as_deref(), Some("OH1"));
    assert_eq!(a.row.last_name.as_deref(), Some("Lovelace"));
    let b = db.store.get_person(bo).await.unwrap();
    assert_eq!(b.emails, vec!["bo@example.org".to_string()]);
    let again = run().await;
    assert_eq!(
        (again.inserted, again.updated, again.unchanged, again.merged),
        (0, 0, 7, 0),
        "{again:?}"
    );
    assert_eq!(db.store.count_people().await.unwrap(), 7);
}

/// The index answers for what it knows without asking the database, learns the
/// people a batch creates, and a stale answer (someone created the person since it
/// was loaded) is caught by the database's keys and resolved again.
async fn the_key_index_answers_and_learns(db: TestDb) {
    use narwhal_people::keyindex::{Hint, KeyIndex};
    use narwhal_store::people::KeyKind;
    let hub = Hub::new(db.store.clone());
    let draft = |v: &str, first: &str| {
        PersonDraft {
            voter_id: Some(VoterId::parse(v).unwrap()),
            name: narwhal_domain::person::PersonNameFields {
                first_name: Some(first.into()),
                ..Default::default()
            },
            ..Default::default()
        }
        .normalize()
    };
    let mut ix = KeyIndex::default();
    // The index holds OH9 as person 424242 with this very record: unchanged, and
    // the database (which has no such person) is not asked.
    let known = draft("OH9", "Known");
    ix.add(
        [(KeyKind::Voter, "OH9")].into_iter(),
        narwhal_domain::PersonId(424242),
        known.fingerprint(),
    );
    let ix = std::sync::RwLock::new(ix);
    let (r, _) = hub
        .upsert_batch_indexed(vec![known], "file", "test", false, Some(&ix))
        .await
        .unwrap();
    assert_eq!(r[0].outcome, Outcome::Unchanged);
    assert_eq!(r[0].id, narwhal_domain::PersonId(424242));
    assert_eq!(db.store.count_people().await.unwrap(), 0);
    // A new record is created, and the index learns its keys.
    let new = draft("OH10", "New");
    let (r, _) = hub
        .upsert_batch_indexed(vec![new.clone()], "file", "test", false, Some(&ix))
        .await
        .unwrap();
    assert_eq!(r[0].outcome, Outcome::Created);
    assert_eq!(
        ix.read().unwrap().classify(&new, new.fingerprint()),
        Hint::Unchanged(r[0].id, new.fingerprint())
    );
    // Someone else creates OH11 behind the index's back.
    let other = hub
        .upsert(draft("OH11", "First"), "api", "test")
        .await
        .unwrap();
    let late = draft("OH11", "Second");
    assert_eq!(
        ix.read().unwrap().classify(&late, late.fingerprint()),
        Hint::New
    );
    let (r, t) = hub
        .upsert_batch_indexed(vec![late], "file", "test", false, Some(&ix))
        .await
        .unwrap();
    assert_eq!((r[0].id, r[0].outcome), (other.id, Outcome::Updated));
    assert_eq!((t.inserted, t.updated), (0, 1));
    assert_eq!(db.store.count_people().await.unwrap(), 2);
}

/// Records of one person within a batch are folded into one before resolution, and
/// each record's result names that person.
async fn records_sharing_a_key_in_a_batch_are_one_person(db: TestDb) {
    let hub = Hub::new(db.store.clone());
    let d = |voter: Option<&str>, email: Option<&str>, phone: Option<&str>, first: &str| {
        PersonDraft {
            voter_id: voter.map(|v| VoterId::parse(v).unwrap()),
            emails: email
                .map(|e| Email::parse(e).unwrap())
                .into_iter()
                .collect(),
            phones: phone
                .map(|p| PhoneE164::parse(p).unwrap())
                .into_iter()
                .collect(),
            name: narwhal_domain::person::PersonNameFields {
                first_name: Some(first.into()),
                ..Default::default()
            },
            ..Default::default()
        }
        .normalize()
    };
    let drafts = vec![
        d(Some("OH1"), None, None, "Al"),
        d(None, Some("b@example.org"), None, "Bea"),
        d(Some("OH1"), Some("c@example.org"), None, "Alan"),
        d(
            None,
            Some("b@example.org"),
            Some("614-555-0100"),
            "Beatrice",
        ),
    ];
    let (r, t) = hub
        .upsert_batch(drafts, "file", "test", false)
        .await
        .unwrap();
    assert_eq!(t.inserted, 2, "{t:?}");
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].id, r[2].id);
    assert_eq!(r[1].id, r[3].id);
    assert_ne!(r[0].id, r[1].id);
    let al = db.store.get_person(r[0].id).await.unwrap();
    assert_eq!(al.row.voter_id.as_deref(), Some("OH1"));
    assert_eq!(al.emails, vec!["c@example.org".to_string()]);
    assert_eq!(
        al.row.first_name.as_deref(),
        Some("Alan"),
        "the later record wins"
    );
    let bea = db.store.get_person(r[1].id).await.unwrap();
    assert_eq!(bea.phones, vec!["+16145550100".to_string()]);
    assert_eq!(db.store.count_people().await.unwrap(), 2);
}

/// An import's lease is renewed while no batch commits (its end, building indexes
/// after a bulk load, can outlast a lease), so no other node takes the job over
/// meanwhile; once the import ends the beats stop, and the lease runs out.
async fn an_import_holds_its_lease_while_no_batch_commits(db: TestDb) {
    use narwhal_people::worker;
    use std::time::Duration;
    let store = &db.store;
    let lease_ms = 1200;
    let id = store
        .create_import("test", "/nowhere/voters.csv", MAPPING, "test", true)
        .await
        .unwrap();
    let job = store
        .claim_job(worker::KINDS, "node-a", lease_ms)
        .await
        .unwrap()
        .expect("the import's job");
    let (progress, watched) =
        tokio::sync::watch::channel(narwhal_store::imports::ImportCounts::default());
    let reporter = worker::report_progress(
        store.clone(),
        id,
        job.id,
        "node-a".into(),
        lease_ms,
        "rejects.csv".into(),
        watched,
    );
    // Two and a half leases without any progress.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        store
            .claim_job(worker::KINDS, "node-b", lease_ms)
            .await
            .unwrap()
            .is_none(),
        "another node took over an import that is still running"
    );
    drop(progress);
    reporter.await.unwrap();
    tokio::time::sleep(Duration::from_millis(lease_ms as u64 + 300)).await;
    let taken = store
        .claim_job(worker::KINDS, "node-b", lease_ms)
        .await
        .unwrap()
        .expect("the lease runs out once its import has stopped beating");
    assert_eq!(taken.id, job.id);
}

/// Imports `path` in batches of 3, and returns, per committed batch, how many of the
/// query-only indexes of people were missing at that moment.
async fn import_watching_indexes(
    db: &TestDb,
    path: &Path,
    bulk_from_rows: u64,
) -> (narwhal_store::imports::ImportCounts, Vec<usize>) {
    let hub = Hub::new(db.store.clone());
    let m = Mapping::parse(MAPPING).unwrap();
    let mut opts = ImportOptions::beside(path);
    opts.batch_rows = 3;
    opts.bulk_from_rows = bulk_from_rows;
    let seen = std::sync::Mutex::new(Vec::new());
    let store = db.store.clone();
    let c = import::run(&hub, path, &m, &opts, "test", &|_| {
        let missing = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(store.missing_people_indexes())
        })
        .unwrap();
        seen.lock().unwrap().push(missing.len());
    })
    .await
    .unwrap();
    (c, seen.into_inner().unwrap())
}

async fn a_bulk_load_builds_the_query_indexes_once_at_its_end(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let mut body = b"VOTER ID,First,Last,Email,Phone,State,County,Party\n".to_vec();
    for i in 0..40 {
        let county = if i % 2 == 0 { "Franklin" } else { "Lucas" };
        // Letters, not digits: a search with digits in it looks for a voter id.
        let last = format!("Zed{}{}", (b'a' + i % 26) as char, (b'a' + i / 26) as char);
        body.extend_from_slice(
            format!("OH{i},Ada,{last},p{i}@example.org,,OH,{county},D\n").as_bytes(),
        );
    }
    let path = write(dir.path(), "voters.csv", &body);
    // An empty hub and a file over the threshold: a bulk load.
    let (c, seen) = import_watching_indexes(&db, &path, 10).await;
    assert_eq!((c.inserted, c.rejected), (40, 0), "{c:?}");
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|&n| n == 4),
        "indexes missing after each batch: {seen:?}"
    );
    assert!(db.store.missing_people_indexes().await.unwrap().is_empty());
    // Built at the end, they serve: a name search and a county segment.
    let found = db.store.search_people("zedra", None, 5).await.unwrap();
    assert_eq!(found[0].voter_id.as_deref(), Some("OH17"));
    let franklin =
        narwhal_domain::SegmentFilter::parse(&serde_json::json!({"county": "FRANKLIN"})).unwrap();
    assert_eq!(db.store.count_matching(&franklin).await.unwrap(), 20);

    // The same file again is no bulk load (the hub already holds as many people):
    // the indexes stay in place throughout, and nothing changes.
    let (c, seen) = import_watching_indexes(&db, &path, 10).await;
    assert_eq!((c.inserted, c.unchanged), (0, 40));
    assert!(seen.iter().all(|&n| n == 0), "{seen:?}");
    // Nor is a file under the threshold.
    let small = write(dir.path(), "small.csv", &body[..200]);
    let (_, seen) = import_watching_indexes(&db, &small, 1_000).await;
    assert!(seen.iter().all(|&n| n == 0), "{seen:?}");
}

both_backends!(
    records_sharing_a_key_in_a_batch_are_one_person,
    a_bulk_load_builds_the_query_indexes_once_at_its_end,
    a_large_import_resolves_from_memory_as_from_the_database,
    the_key_index_answers_and_learns,
    keys_shared_across_parallel_batches_make_one_person,
    keys_shared_across_batches_with_the_key_index,
    concurrent_writers_never_duplicate_a_person,
    import_rejects_bad_rows_with_line_and_reason,
    whole_file_errors_name_the_file_and_write_nothing,
    reimport_changes_nothing_and_tsv_latin1_work,
    sources_resolve_to_one_person_with_provenance,
    inbound_payloads_become_people_once,
    queued_import_job_runs_on_the_worker,
    an_import_holds_its_lease_while_no_batch_commits,
);
