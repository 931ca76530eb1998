//! The store contract, checked against both backends: every case runs once on a SQLite
//! file and once on a real PostgreSQL server from the lab (a database of its own).

use std::sync::Arc;
use std::time::Duration;

use drover_lab::{Node, PgPair};

use super::*;

/// A store of each kind, with what keeps it alive.
enum Held {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Box<PgPair>),
}

fn sqlite() -> (Store, Held) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    (store, Held::Sqlite(dir))
}

/// A PostgreSQL server of its own and the URL of a fresh database on it.
pub(crate) fn postgres_url() -> (Box<PgPair>, String) {
    let pair = Box::new(PgPair::start_single().expect("start PostgreSQL"));
    pair.sql(Node::Primary, "CREATE DATABASE drover_state").unwrap();
    let url = pair.primary_url().replace("/postgres?", "/drover_state?");
    (pair, url)
}

fn postgres() -> (Store, Held) {
    let (pair, url) = postgres_url();
    let store = Store::open_url(&url).unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    (store, Held::Postgres(pair))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `contract!(name, |store| async { ... })`: the case as `name::sqlite` and
/// `name::postgres`.
macro_rules! contract {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn sqlite() {
                let (store, _held) = super::sqlite();
                rt().block_on(($body)(store));
            }
            #[test]
            fn postgres() {
                let (store, _held) = super::postgres();
                rt().block_on(($body)(store));
            }
        }
    };
}

fn run_row(id: &str, service: &str, mode: &str) -> RunRow {
    RunRow {
        id: id.into(),
        runbook: format!("rb-{service}"),
        service: service.into(),
        mode: mode.into(),
        state: "running".into(),
        outcome: None,
        started_at: format!("2026-12-02T01:00:0{}Z", id.len() % 10),
        finished_at: None,
    }
}

async fn create(store: &Store, row: RunRow, admission: Admission) -> Result<(String, String), Refusal> {
    let id = row.id.clone();
    store
        .create_run(row, admission, move |number| {
            Ok(format!(r#"{{"seq":0,"run":"{id}","change":"{number}"}}"#))
        })
        .await
        .unwrap()
}

async fn append(store: &Store, run: &str, seq: u64) -> StoreResult<()> {
    store
        .append_queued(Arc::from(run), seq, format!(r#"{{"seq":{seq}}}"#))
        .await
        .unwrap()
}

async fn finish(store: &Store, run: &str, seq: u64, outcome: &'static str, lock: LockRelease) -> StoreResult<()> {
    let rid = run.to_owned();
    store
        .commit_queued(
            Arc::from(run),
            vec![(seq, format!(r#"{{"seq":{seq},"kind":"run_finished"}}"#))],
            Box::new(move |tx| finish_row(tx, &rid, outcome, "2026-12-02T01:10:00Z", lock)),
        )
        .await
        .unwrap()
}

contract!(
    a_run_starts_with_its_lock_change_number_and_first_record,
    |store: Store| async move {
        let (number, json) = create(&store, run_row("r1", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        assert_eq!(number, "CHG-2026-0001");
        assert_eq!(store.records("r1").unwrap(), vec![StoredRecord { seq: 0, json }]);
        assert_eq!(store.service_holder("svc").unwrap().as_deref(), Some("r1"));
        let row = store.run("r1").unwrap().unwrap();
        assert_eq!(row, run_row("r1", "svc", "drill"));
        // The service is held: refused, with the holder.
        match create(&store, run_row("r2", "svc", "drill"), Admission::default()).await {
            Err(Refusal::Locked(holder)) => assert_eq!(holder.id, "r1"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The same id for another service: drawn again.
        assert_eq!(
            create(&store, run_row("r1", "other", "drill"), Admission::default()).await,
            Err(Refusal::IdInUse)
        );
        // A refused start leaves nothing behind, and numbers keep counting.
        assert!(store.run("r2").unwrap().is_none());
        assert_eq!(store.service_holder("other").unwrap(), None);
        let (number, _) = create(&store, run_row("r3", "other", "drill"), Admission::default())
            .await
            .unwrap();
        assert_eq!(number, "CHG-2026-0002");
    }
);

contract!(
    appends_are_stored_in_order_and_a_failed_one_stops_its_run,
    |store: Store| async move {
        create(&store, run_row("a", "svc-a", "drill"), Admission::default())
            .await
            .unwrap();
        create(&store, run_row("b", "svc-b", "drill"), Admission::default())
            .await
            .unwrap();
        // Queued together (group commit), acknowledged each.
        let pending: Vec<_> = (1..=200u64)
            .map(|seq| store.append_queued(Arc::from("a"), seq, format!(r#"{{"seq":{seq}}}"#)))
            .collect();
        for rx in pending {
            rx.await.unwrap().unwrap();
        }
        let seqs: Vec<u64> = store.records("a").unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..=200).collect::<Vec<_>>());
        // A record that cannot be stored (its seq is taken) fails, and so does every later
        // record of that run; other runs go on.
        assert!(append(&store, "b", 0).await.is_err());
        let later = append(&store, "b", 1).await.unwrap_err();
        assert!(
            later
                .to_string()
                .contains("an earlier record of this run was not stored"),
            "{later}"
        );
        append(&store, "a", 201).await.unwrap();
        assert_eq!(store.records("b").unwrap().len(), 1);
    }
);

contract!(
    the_finish_stores_records_row_and_lock_together,
    |store: Store| async move {
        create(&store, run_row("f1", "svc", "failover"), Admission::default())
            .await
            .unwrap();
        append(&store, "f1", 1).await.unwrap();
        finish(&store, "f1", 2, "passed", LockRelease::Free).await.unwrap();
        let row = store.run("f1").unwrap().unwrap();
        assert_eq!(
            (row.state.as_str(), row.outcome.as_deref()),
            ("finished", Some("passed"))
        );
        assert_eq!(row.finished_at.as_deref(), Some("2026-12-02T01:10:00Z"));
        assert_eq!(store.service_holder("svc").unwrap(), None);
        assert_eq!(store.records("f1").unwrap().len(), 3);
        // Anti-flap: the failover that just ended holds the service for the window.
        let anti_flap = Admission {
            anti_flap: Some(Duration::from_secs(100 * 365 * 24 * 3600)),
        };
        match create(&store, run_row("f2", "svc", "failover"), anti_flap).await {
            Err(Refusal::AntiFlap(last, _)) => assert_eq!(last.id, "f1"),
            other => panic!("expected anti-flap, got {other:?}"),
        }
        // A stuck run keeps its service until it is acknowledged.
        create(&store, run_row("s1", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        finish(&store, "s1", 1, "stuck", LockRelease::Keep).await.unwrap();
        assert!(matches!(
            create(&store, run_row("s2", "svc", "drill"), Admission::default()).await,
            Err(Refusal::Locked(h)) if h.id == "s1"
        ));
        store
            .write(|tx| acknowledge_row(tx, "s1", "2026-12-02T01:20:00Z"))
            .await
            .unwrap();
        assert_eq!(store.service_holder("svc").unwrap(), None);
        create(&store, run_row("s2", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        // settle: the row and lock of a run whose end was cut short.
        store
            .settle("s2", "failed", "2026-12-02T01:30:00Z", LockRelease::Free)
            .await
            .unwrap();
        assert_eq!(store.run("s2").unwrap().unwrap().outcome.as_deref(), Some("failed"));
        assert_eq!(store.service_holder("svc").unwrap(), None);
        store.sync().await.unwrap();
    }
);

contract!(a_failed_commit_stores_none_of_it, |store: Store| async move {
    create(&store, run_row("c1", "svc", "drill"), Admission::default())
        .await
        .unwrap();
    let r = store
        .commit_queued(
            Arc::from("c1"),
            vec![(1, "{}".into()), (2, "{}".into())],
            Box::new(|tx| {
                finish_row(tx, "c1", "passed", "2026-12-02T01:10:00Z", LockRelease::Free)?;
                Err(StoreError::Other("boom".into()))
            }),
        )
        .await
        .unwrap();
    assert!(r.is_err());
    assert_eq!(store.records("c1").unwrap().len(), 1);
    assert_eq!(store.run("c1").unwrap().unwrap().state, "running");
    assert_eq!(store.service_holder("svc").unwrap().as_deref(), Some("c1"));
});

/// Every way of changing an append-only table, refused by the database itself.
async fn refused_changes(store: &Store, statements: &[&str]) {
    for sql in statements {
        let sql = (*sql).to_owned();
        let shown = sql.clone();
        let e = store
            .write(move |tx| tx.execute(&sql, &[]))
            .await
            .expect_err(&format!("`{shown}` was allowed"));
        assert!(e.to_string().contains("append-only"), "`{shown}`: {e}");
    }
}

contract!(
    journal_audit_and_actions_refuse_updates_and_deletes,
    |store: Store| async move {
        create(&store, run_row("j1", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        let before = store.records("j1").unwrap();
        store
            .audit(AuditEntry {
                at: "2026-12-02T01:00:00Z".into(),
                who: "alice".into(),
                role: Some("operator".into()),
                action: "POST /api/v1/runs".into(),
                decision: "allowed".into(),
                status: 201,
                detail: None,
            })
            .await
            .unwrap();
        insert_action(&store, "CA-2026-0001", "j1").await;
        store
            .close_action("CA-2026-0001", "bob", "fixed")
            .await
            .unwrap()
            .unwrap();
        let mut statements = vec![
            "UPDATE journal SET record = 'x'",
            "DELETE FROM journal",
            "UPDATE audit SET who = 'mallory'",
            "DELETE FROM audit",
            "UPDATE actions SET summary = 'nothing'",
            "DELETE FROM actions",
            "UPDATE action_events SET note = 'x'",
            "DELETE FROM action_events",
        ];
        if store.backend() == Backend::Postgres {
            statements.extend([
                "TRUNCATE journal",
                "TRUNCATE audit",
                "TRUNCATE actions",
                "TRUNCATE action_events",
            ]);
        }
        refused_changes(&store, &statements).await;
        assert_eq!(store.records("j1").unwrap(), before);
        assert_eq!(store.audit_log(10).unwrap()[0].who, "alice");
        assert_eq!(store.action("CA-2026-0001").unwrap().unwrap().events.len(), 1);
    }
);

async fn insert_action(store: &Store, id: &str, run: &str) {
    let (id, run) = (id.to_owned(), run.to_owned());
    store
        .write(move |tx| {
            tx.execute(
                "INSERT INTO actions (id, run_id, finding, runbook, service, kind, ci, owner, summary, detail, opened_at)
                 VALUES ($1, $2, $1, 'rb-svc', 'svc', 'failed_step', 'db', NULL, 'step `x` failed', '{\"step\":\"x\"}', '2026-12-02T01:00:00Z')",
                args![&id, &run],
            )
            .map(drop)
        })
        .await
        .unwrap();
}

contract!(corrective_actions_list_and_close_once, |store: Store| async move {
    create(&store, run_row("k1", "svc", "drill"), Admission::default())
        .await
        .unwrap();
    insert_action(&store, "CA-2026-0001", "k1").await;
    insert_action(&store, "CA-2026-0002", "k1").await;
    let all = store.actions(&crate::actions::ActionFilter::default()).unwrap();
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["CA-2026-0001", "CA-2026-0002"]
    );
    assert!(all.iter().all(|a| a.is_open() && a.detail["step"] == "x"));
    let closed = store
        .close_action("CA-2026-0001", "bob", "fixed by hand")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.state, "closed");
    assert_eq!(closed.closed.as_ref().map(|c| c.by.as_str()), Some("bob"));
    assert!(matches!(
        store.close_action("CA-2026-0001", "bob", "again").await.unwrap(),
        Err(crate::actions::CloseRefusal::AlreadyClosed(_))
    ));
    assert!(matches!(
        store.close_action("CA-2026-0099", "bob", "x").await.unwrap(),
        Err(crate::actions::CloseRefusal::NotFound)
    ));
    let filter =
        |f: crate::actions::ActionFilter| store.actions(&f).unwrap().into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        filter(crate::actions::ActionFilter {
            open_only: true,
            ..Default::default()
        }),
        ["CA-2026-0002"]
    );
    assert_eq!(
        filter(crate::actions::ActionFilter {
            service: Some("db".into()),
            ..Default::default()
        })
        .len(),
        2
    );
    assert!(
        filter(crate::actions::ActionFilter {
            runbook: Some("nope".into()),
            ..Default::default()
        })
        .is_empty()
    );
    assert_eq!(
        filter(crate::actions::ActionFilter {
            run: Some("k1".into()),
            ..Default::default()
        })
        .len(),
        2
    );
});

contract!(runs_audit_and_firings_read_back, |store: Store| async move {
    for (id, svc) in [("20261202-aaa", "s1"), ("20261202-aab", "s2"), ("20261202-b", "s3")] {
        create(&store, run_row(id, svc, "drill"), Admission::default())
            .await
            .unwrap();
    }
    let prefixed: Vec<String> = store
        .runs_with_prefix("20261202-aa")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(prefixed, ["20261202-aaa", "20261202-aab"]);
    assert!(store.runs_with_prefix("x").unwrap().is_empty());
    assert_eq!(store.run_ids().unwrap(), ["20261202-aaa", "20261202-aab", "20261202-b"]);
    // Newest first (the start times differ by the id's length), then by id.
    let ids: Vec<String> = store.runs(10).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["20261202-aab", "20261202-aaa", "20261202-b"]);
    assert_eq!(store.runs(1).unwrap().len(), 1);
    for (at, outcome) in [("2026-12-02T01:00:00Z", "started"), ("2026-12-02T02:00:00Z", "skipped")] {
        store
            .record_firing(Firing {
                schedule: "nightly".into(),
                at: at.into(),
                outcome: outcome.into(),
                run_id: (outcome == "started").then(|| "20261202-b".into()),
                reason: (outcome == "skipped").then(|| "locked".into()),
            })
            .await
            .unwrap();
    }
    let firings = store.firings("nightly", 10).unwrap();
    assert_eq!(
        firings.iter().map(|f| f.outcome.as_str()).collect::<Vec<_>>(),
        ["skipped", "started"]
    );
    assert_eq!(firings[1].run_id.as_deref(), Some("20261202-b"));
    assert!(store.firings("other", 10).unwrap().is_empty());
    for who in ["a", "b"] {
        store
            .audit(AuditEntry {
                at: "2026-12-02T01:00:00Z".into(),
                who: who.into(),
                role: None,
                action: "GET /api/v1/runs".into(),
                decision: "denied".into(),
                status: 403,
                detail: Some("no token".into()),
            })
            .await
            .unwrap();
    }
    let log = store.audit_log(1).unwrap();
    assert_eq!((log.len(), log[0].who.as_str(), log[0].status), (1, "b", 403));
});

#[test]
fn postgres_schema_is_versioned_and_migrated_once_by_concurrent_openers() {
    let (pair, url) = postgres_url();
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Store::open_url(&url).map(drop))
        })
        .collect();
    for o in openers {
        o.join().unwrap().unwrap();
    }
    let store = Store::open_url(&url).unwrap();
    let versions = store
        .read(|db| {
            db.query("SELECT version FROM schema_version ORDER BY version", &[])?
                .iter()
                .map(|r| r.int(0))
                .collect::<StoreResult<Vec<_>>>()
        })
        .unwrap();
    assert_eq!(versions, (1..=pg::SCHEMA_VERSION).collect::<Vec<_>>());
    assert!(store.dir().starts_with(std::env::temp_dir()));
    assert!(!store.path().display().to_string().contains(pair.password()));
}

#[test]
fn postgres_errors_never_show_the_password() {
    let (pair, url) = postgres_url();
    let wrong = url.replace(pair.password(), "not-the-password-at-all");
    let e = Store::open_url(&wrong).unwrap_err().to_string();
    assert!(e.contains("postgres://drover@127.0.0.1:"), "{e}");
    assert!(
        !e.contains("not-the-password-at-all") && !e.contains(pair.password()),
        "{e}"
    );
    let e = Store::open_url(&url.replace("sslmode=disable", "sslmode=bogus"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown sslmode"), "{e}");
}

#[test]
fn the_lease_is_taken_when_expired_or_own_and_its_epoch_moves_with_the_holder() {
    let (store, _held) = postgres();
    rt().block_on(async {
        let long = Duration::from_secs(3600);
        let before = store.lease("leader").unwrap().unwrap();
        assert_eq!(
            (before.holder.as_deref(), before.epoch, before.live()),
            (None, 0, false)
        );
        // Nobody holds it: taken, epoch 1.
        let a = store.acquire_lease("leader", "east", long).await.unwrap().unwrap();
        assert_eq!((a.holder.as_deref(), a.epoch, a.live()), (Some("east"), 1, true));
        // Held: another node is refused; the holder renews without a new epoch.
        assert_eq!(store.acquire_lease("leader", "west", long).await.unwrap(), None);
        let renewed = store.acquire_lease("leader", "east", long).await.unwrap().unwrap();
        assert_eq!(renewed.epoch, 1);
        assert!(renewed.expires_at >= a.expires_at);
        // A lease of zero length has expired by the next statement (the database's
        // clock): the other node takes it, with the next epoch, and the old holder can
        // neither renew nor release it.
        store
            .acquire_lease("leader", "east", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let b = store.acquire_lease("leader", "west", long).await.unwrap().unwrap();
        assert_eq!((b.holder.as_deref(), b.epoch), (Some("west"), 2));
        assert_eq!(store.acquire_lease("leader", "east", long).await.unwrap(), None);
        assert!(!store.release_lease("leader", "east").await.unwrap());
        // Released: it ends now, and the next taker gets a new epoch at once.
        assert!(store.release_lease("leader", "west").await.unwrap());
        assert!(!store.lease("leader").unwrap().unwrap().live());
        let c = store.acquire_lease("leader", "east", long).await.unwrap().unwrap();
        assert_eq!((c.holder.as_deref(), c.epoch), (Some("east"), 3));
    });
}

#[test]
fn nodes_racing_for_the_lease_elect_exactly_one() {
    let (pair, url) = postgres_url();
    let _keep = pair;
    let stores: Vec<Store> = (0..6).map(|_| Store::open_url(&url).unwrap()).collect();
    let rt = rt();
    let won = rt.block_on(async {
        let tries = stores.iter().enumerate().map(|(i, s)| {
            let s = s.clone();
            tokio::spawn(async move {
                s.acquire_lease("leader", &format!("node-{i}"), Duration::from_secs(3600))
                    .await
            })
        });
        let mut won = Vec::new();
        for t in tries {
            if let Some(l) = t.await.unwrap().unwrap() {
                won.push(l);
            }
        }
        won
    });
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0].epoch, 1);
    assert_eq!(stores[0].lease("leader").unwrap().unwrap().holder, won[0].holder);
}

#[test]
fn a_sqlite_store_has_no_lease() {
    let (store, _held) = sqlite();
    let e = rt()
        .block_on(store.acquire_lease("leader", "east", Duration::from_secs(1)))
        .unwrap_err();
    assert!(e.to_string().contains("needs a PostgreSQL state store"), "{e}");
}

#[test]
fn a_writer_of_an_older_epoch_is_fenced_in_the_same_transaction() {
    let (pair, url) = postgres_url();
    let _keep = pair;
    let east = Store::open_url(&url).unwrap();
    let west = Store::open_url(&url).unwrap();
    let cli = Store::open_url(&url).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(3600);
        let a = east.acquire_lease("leader", "east", long).await.unwrap().unwrap();
        east.set_writer(Some(Writer {
            node: "east".into(),
            epoch: a.epoch,
        }))
        .await
        .unwrap();
        assert_eq!(east.writer().map(|w| w.epoch), Some(1));
        create(&east, run_row("r1", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        append(&east, "r1", 1).await.unwrap();
        // The lease ends (east is paused, cut off...) and west takes it: epoch 2.
        east.acquire_lease("leader", "east", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        let b = west.acquire_lease("leader", "west", long).await.unwrap().unwrap();
        assert_eq!(b.epoch, 2);
        west.set_writer(Some(Writer {
            node: "west".into(),
            epoch: b.epoch,
        }))
        .await
        .unwrap();
        // Every write east makes now is refused, and nothing of it lands: a journal
        // append, a finish (records, run row and lock in one transaction), a new run.
        let e = append(&east, "r1", 2).await.unwrap_err();
        assert!(e.is_fenced(), "{e}");
        assert!(e.to_string().contains("west leads at epoch 2"), "{e}");
        store_reopen_and_check(&east, "r1").await;
        east.reopen("r1");
        let e = finish(&east, "r1", 2, "passed", LockRelease::Free).await.unwrap_err();
        assert!(e.is_fenced(), "{e}");
        let e = east
            .create_run(run_row("r2", "other", "drill"), Admission::default(), |_| {
                Ok(r#"{"seq":0}"#.into())
            })
            .await
            .unwrap_err();
        assert!(e.is_fenced(), "{e}");
        let e = east
            .record_firing(Firing {
                schedule: "nightly".into(),
                at: "2026-12-02T01:00:00Z".into(),
                outcome: "started".into(),
                run_id: None,
                reason: None,
            })
            .await
            .unwrap_err();
        assert!(e.is_fenced(), "{e}");
        assert_eq!(west.records("r1").unwrap().len(), 2);
        assert!(west.run("r2").unwrap().is_none());
        assert_eq!(west.run("r1").unwrap().unwrap().state, "running");
        assert!(west.firings("nightly", 10).unwrap().is_empty());
        // The new leader writes; so does a connection that writes as no leader (the CLI).
        append(&west, "r1", 2).await.unwrap();
        append(&cli, "r1", 3).await.unwrap();
        finish(&west, "r1", 4, "passed", LockRelease::Free).await.unwrap();
        assert_eq!(west.run("r1").unwrap().unwrap().outcome.as_deref(), Some("passed"));
    });
}

/// After a refused append the run's records are refused until it is reopened.
async fn store_reopen_and_check(store: &Store, run: &str) {
    let e = append(store, run, 3).await.unwrap_err();
    assert!(
        e.to_string().contains("an earlier record of this run was not stored"),
        "{e}"
    );
    store.reopen(run);
    // Reopened: the next append reaches the database (and is fenced there).
    let e = append(store, run, 2).await.unwrap_err();
    assert!(e.is_fenced(), "{e}");
}

#[test]
fn the_fence_survives_a_reconnect_and_members_are_seen_by_the_database_clock() {
    let (pair, url) = postgres_url();
    let east = Store::open_url(&url).unwrap();
    let west = Store::open_url(&url).unwrap();
    rt().block_on(async {
        let long = Duration::from_secs(3600);
        east.acquire_lease("leader", "east", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        east.set_writer(Some(Writer {
            node: "east".into(),
            epoch: 1,
        }))
        .await
        .unwrap();
        create(&east, run_row("r1", "svc", "drill"), Admission::default())
            .await
            .unwrap();
        let b = west.acquire_lease("leader", "west", long).await.unwrap().unwrap();
        assert_eq!(b.epoch, 2);
        // The server restarts: east's connections are cut and opened again; the epoch
        // it writes with is said again on the new connection, so it stays fenced.
        pair.stop_primary().unwrap();
        pair.start_primary().unwrap();
        let mut fenced = None;
        for _ in 0..50 {
            match append(&east, "r1", 1).await {
                Err(e) if e.is_fenced() => {
                    fenced = Some(e);
                    break;
                }
                Err(_) => {
                    east.reopen("r1");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(()) => panic!("a fenced writer's append landed after a reconnect"),
            }
        }
        assert!(fenced.is_some(), "never reached the database again");
        // West's connections meet the cut at their first statement, then reconnect.
        let _ = west.records("r1");
        assert_eq!(west.records("r1").unwrap().len(), 1);
        east.heartbeat("east", Some("east-dc"), Some("https://127.0.0.1:1"))
            .await
            .unwrap();
        let _ = west.heartbeat("west", None, None).await;
        west.heartbeat("west", None, None).await.unwrap();
        let members = west.members().unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.node.as_str(), m.site.as_deref()))
                .collect::<Vec<_>>(),
            [("east", Some("east-dc")), ("west", None)]
        );
        assert!(members.iter().all(|m| (0..5_000).contains(&m.age_ms)), "{members:?}");
    });
}
