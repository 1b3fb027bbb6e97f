//! One conformance suite for both store backends: every case runs on SQLite and on
//! PostgreSQL and must behave the same.

mod support;

use std::sync::Arc;

use headwater_admin::clock::{Clock, ManualClock};
use headwater_admin::control::worker::{LEASE_MS, Worker};
use headwater_admin::domain::{AccountName, IpAllow, Offer, OfferKind};
use headwater_admin::keys;
use headwater_admin::states::{AccountState, OperationKind, OperationState, PoolKind, PoolState};
use headwater_admin::store::AccountLimits;
use headwater_admin::store::{
    AccountChange, Effect, IdempotencyStart, NewAccount, NewOperation, OperationFilter, StoreError,
};
use support::{TestDb, raw_count, raw_execute};
use tokio::sync::Notify;
use uuid::Uuid;

const T0: i64 = 1_790_000_000_000;

async fn customer(db: &TestDb, email: &str) -> Uuid {
    db.store.create_customer("Test", email, &keys::generate(), T0).await.expect("customer").id
}

fn new_account(customer_id: Uuid, name: &str, origin_type: &str, offer: Offer) -> NewAccount {
    NewAccount {
        customer_id,
        name: AccountName::parse(name).expect("name"),
        origin_type: origin_type.into(),
        offer,
        ip_allow: IpAllow::default(),
        allow_origins: Vec::new(),
        locator: format!("http://router/{name}/"),
    }
}

fn create_op(account_id: Uuid, customer_id: Uuid) -> NewOperation {
    NewOperation {
        account_id: Some(account_id),
        customer_id: Some(customer_id),
        ..NewOperation::new(OperationKind::Create)
    }
}

async fn seeded(db: &TestDb) {
    db.store.seed_builtin_types(T0).await.expect("seed");
    // Seeding twice changes nothing.
    db.store.seed_builtin_types(T0 + 1).await.expect("seed again");
}

fn sla(mbps: i64) -> Offer {
    Offer::parse(OfferKind::Sla, Some(mbps), 100).expect("sla")
}

async fn customers_keys_and_unique_emails(db: TestDb) {
    let key = keys::generate();
    let c = db.store.create_customer("Ana", "ana@example.com", &key, T0).await.expect("create");
    assert_eq!(c.email, "ana@example.com");
    let err = db.store.create_customer("Ana 2", "ana@example.com", &keys::generate(), T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { field: "email" }), "{err:?}");

    let row = db.store.api_key(key.id).await.expect("lookup").expect("key row");
    assert_eq!(row.customer_id, c.id);
    assert_eq!(row.secret_hash, key.secret_hash);
    assert!(row.revoked_at.is_none());

    let second = keys::generate();
    db.store.add_api_key(c.id, &second, T0 + 5).await.expect("add key");
    db.store.revoke_api_key(c.id, key.id, T0 + 10).await.expect("revoke");
    assert_eq!(db.store.api_key(key.id).await.unwrap().unwrap().revoked_at, Some(T0 + 10));
    // Revoking twice, or someone else's key, is not found.
    assert!(matches!(db.store.revoke_api_key(c.id, key.id, T0 + 11).await, Err(StoreError::NotFound)));
    let other = customer(&db, "bo@example.com").await;
    assert!(matches!(db.store.revoke_api_key(other, second.id, T0 + 11).await, Err(StoreError::NotFound)));
    assert_eq!(db.store.api_keys(c.id).await.unwrap().len(), 2);
}

async fn account_rules_live_in_the_schema(db: TestDb) {
    seeded(&db).await;
    let ana = customer(&db, "ana@example.com").await;
    let bo = customer(&db, "bo@example.com").await;
    let id = Uuid::now_v7();
    let (a, op) = db
        .store
        .create_account(&new_account(ana, "ana-vod", "hls", Offer::Payg), &create_op(id, ana), &AccountLimits::NONE, T0)
        .await
        .expect("create");
    assert_eq!((a.id, a.state.as_str(), a.offer.as_str()), (id, "provisioning", "payg"));
    assert_eq!((op.state.as_str(), op.kind.as_str()), ("pending", "create"));

    // Names are globally unique, across customers.
    let dup = db
        .store
        .create_account(
            &new_account(bo, "ana-vod", "dash", Offer::Trial),
            &create_op(Uuid::now_v7(), bo),
            &AccountLimits::NONE,
            T0,
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict { field: "name" })), "{dup:?}");
    // One live account per customer per origin type.
    let second = db
        .store
        .create_account(
            &new_account(ana, "ana-two", "hls", Offer::Trial),
            &create_op(Uuid::now_v7(), ana),
            &AccountLimits::NONE,
            T0,
        )
        .await;
    assert!(matches!(second, Err(StoreError::Conflict { field: "origin_type" })), "{second:?}");
    // Another type is fine.
    db.store
        .create_account(
            &new_account(ana, "ana-dash", "dash", Offer::Trial),
            &create_op(Uuid::now_v7(), ana),
            &AccountLimits::NONE,
            T0,
        )
        .await
        .expect("dash");

    // The schema itself refuses what the API would: bad names, SLA off-increment,
    // an sla without mbps, an unknown origin type.
    let insert = |name: &str, offer: &str, sla: &str, ty: &str| {
        format!(
            "INSERT INTO accounts (id, customer_id, name, origin_type, offer, sla_mbps, state, locator, ip_allow, created_at, updated_at)
             SELECT {id}, id, '{name}', '{ty}', '{offer}', {sla}, 'active', 'x', '[]', 0, 0 FROM customers WHERE email = 'bo@example.com'",
            id = if db.url.starts_with("postgres") { format!("'{}'", Uuid::now_v7()) } else { format!("x'{}'", Uuid::now_v7().simple()) },
        )
    };
    for (name, offer, sla, ty) in [
        ("-bad", "trial", "NULL", "hls"),
        ("Bad", "trial", "NULL", "hls"),
        ("ab", "trial", "NULL", "hls"),
        ("bo-sla", "sla", "250", "hls"),
        ("bo-sla", "sla", "NULL", "hls"),
        ("bo-sla", "gold", "NULL", "hls"),
        ("bo-sla", "trial", "NULL", "nope"),
    ] {
        let r = raw_execute(&db.url, &insert(name, offer, sla, ty)).await;
        assert!(r.is_err(), "schema accepted {name} {offer} {sla} {ty}");
    }
    assert_eq!(raw_execute(&db.url, &insert("bo-sla", "sla", "300", "hls")).await, Ok(1));
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM accounts").await, 3);
}

async fn sla_increment_changes_are_checked_against_existing_accounts(db: TestDb) {
    seeded(&db).await;
    let ana = customer(&db, "ana@example.com").await;
    db.store
        .create_account(
            &new_account(ana, "ana-vod", "hls", sla(300)),
            &create_op(Uuid::now_v7(), ana),
            &AccountLimits::NONE,
            T0,
        )
        .await
        .expect("create");
    let mut s = headwater_admin::store::OriginTypeSettings::DEFAULT;
    s.sla_increment_mbps = 200;
    let err = db.store.update_origin_type("hls", &s, "operator", T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Constraint(_)), "{err:?}");
    assert_eq!(db.store.origin_type("hls").await.unwrap().unwrap().sla_increment_mbps, 100);
    s.sla_increment_mbps = 50;
    assert_eq!(
        db.store.update_origin_type("hls", &s, "operator", T0).await.expect("50 divides 300").sla_increment_mbps,
        50
    );
}

/// Enqueues a create operation for a new payg account and returns (account, op) ids.
async fn enqueue(db: &TestDb, customer_id: Uuid, name: &str) -> (Uuid, Uuid) {
    let id = Uuid::now_v7();
    let (_, op) = db
        .store
        .create_account(
            &new_account(customer_id, name, "hls", Offer::Payg),
            &create_op(id, customer_id),
            &AccountLimits::NONE,
            T0,
        )
        .await
        .expect("create");
    (id, op.id)
}

async fn queue_claims_with_leases_in_order(db: TestDb) {
    seeded(&db).await;
    let ana = customer(&db, "ana@example.com").await;
    let bo = customer(&db, "bo@example.com").await;
    let (_, first) = enqueue(&db, ana, "ana-vod").await;
    let (_, second) = enqueue(&db, bo, "bo-vod").await;

    let a = db.store.claim_operation("w1", T0, LEASE_MS).await.unwrap().expect("claims the oldest");
    assert_eq!((a.id, a.state.as_str(), a.attempts, a.lease_owner.as_deref()), (first, "running", 1, Some("w1")));
    let b = db.store.claim_operation("w2", T0, LEASE_MS).await.unwrap().expect("claims the next");
    assert_eq!(b.id, second);
    assert!(db.store.claim_operation("w3", T0 + 1, LEASE_MS).await.unwrap().is_none(), "both are leased");

    // Only the lease holder may record a step.
    let stolen = db.store.complete_step(&a, "w2", "pool_assigned", None, false, T0 + 2).await;
    assert!(matches!(stolen, Err(StoreError::NotFound)), "{stolen:?}");

    // The lease expires: another worker takes the operation over, attempt 2.
    let again = db.store.claim_operation("w3", T0 + LEASE_MS + 1, LEASE_MS).await.unwrap().expect("expired lease");
    assert_eq!((again.id, again.attempts, again.lease_owner.as_deref()), (first, 2, Some("w3")));
    let late = db.store.complete_step(&a, "w1", "pool_assigned", None, false, T0 + LEASE_MS + 2).await;
    assert!(matches!(late, Err(StoreError::NotFound)), "the old worker lost its lease");

    // A failed attempt waits for its back-off, then runs again; give_up fails it.
    db.store.fail_attempt(&again, "w3", "boom", T0 + 100_000, false, T0 + LEASE_MS + 3).await.unwrap();
    let other = db.store.claim_operation("w4", T0 + 99_999, LEASE_MS).await.unwrap();
    assert_eq!(other.map(|o| o.id), Some(second), "only the other (expired) operation is runnable");
    let third = db.store.claim_operation("w4", T0 + 100_000, LEASE_MS).await.unwrap().expect("after back-off");
    assert_eq!((third.attempts, third.last_error.as_deref()), (3, Some("boom")));
    db.store.fail_attempt(&third, "w4", "still boom", T0 + 200_000, true, T0 + 100_001).await.unwrap();
    let failed = db.store.operation(first, OperationFilter::Any).await.unwrap();
    assert_eq!(failed.state, OperationState::Failed);
    assert!(db.store.claim_operation("w5", T0 + 10_000_000, LEASE_MS).await.unwrap().is_some_and(|o| o.id == second));
}

async fn operations_of_one_account_run_one_at_a_time(db: TestDb) {
    seeded(&db).await;
    let ana = customer(&db, "ana@example.com").await;
    let (account, create) = enqueue(&db, ana, "ana-vod").await;
    let row = db.store.account_by_id(account).await.unwrap();
    let change = AccountChange::Update { offer: Some(sla(200)), ip_allow: None, allow_origins: None };
    let op = NewOperation {
        account_id: Some(account),
        customer_id: Some(ana),
        ..NewOperation::new(OperationKind::ChangeOffer)
    };
    let later = db.store.change_account(&row, &change, &op, &AccountLimits::NONE, "test", T0 + 1).await.unwrap();

    let c = db.store.claim_operation("w1", T0 + 2, LEASE_MS).await.unwrap().expect("create first");
    assert_eq!(c.id, create);
    assert!(
        db.store.claim_operation("w2", T0 + 2, LEASE_MS).await.unwrap().is_none(),
        "the change waits for the create"
    );
    db.store.complete_step(&c, "w1", "done", None, true, T0 + 3).await.unwrap();
    let next = db.store.claim_operation("w2", T0 + 4, LEASE_MS).await.unwrap().expect("then the change");
    assert_eq!(next.id, later.id);
}

async fn concurrent_claims_never_share_an_operation(db: TestDb) {
    seeded(&db).await;
    let mut ops = Vec::new();
    for i in 0..8 {
        let c = customer(&db, &format!("c{i}@example.com")).await;
        ops.push(enqueue(&db, c, &format!("acct-{i}")).await.1);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move { store.claim_operation(&format!("w{w}"), T0, LEASE_MS).await }));
    }
    let mut claimed = Vec::new();
    for t in tasks {
        if let Some(op) = t.await.unwrap().expect("claim") {
            claimed.push(op.id);
        }
    }
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(before, claimed.len(), "an operation was claimed twice");
    assert_eq!(claimed.len(), 8, "every operation was claimed by someone");
    ops.sort();
    assert_eq!(claimed, ops);
}

fn worker(db: &TestDb, clock: &ManualClock) -> Worker {
    Worker::new(db.store.clone(), Arc::new(clock.clone()) as Arc<dyn Clock>, Arc::new(Notify::new()))
}

async fn drain(w: &Worker) {
    for _ in 0..50 {
        if !w.run_once().await.expect("worker") {
            return;
        }
    }
    panic!("the worker never ran out of work");
}

async fn worker_keeps_pool_and_allocation_tables_true(db: TestDb) {
    seeded(&db).await;
    let clock = ManualClock::new(T0);
    let w = worker(&db, &clock);
    let ana = customer(&db, "ana@example.com").await;
    let bo = customer(&db, "bo@example.com").await;
    let (trial, _) = enqueue(&db, ana, "ana-vod").await;
    let sla_id = Uuid::now_v7();
    db.store
        .create_account(&new_account(bo, "bo-vod", "hls", sla(300)), &create_op(sla_id, bo), &AccountLimits::NONE, T0)
        .await
        .unwrap();
    drain(&w).await;

    let a = db.store.account_by_id(trial).await.unwrap();
    assert_eq!((a.state.as_str(), a.pool_kind.map(PoolKind::as_str)), ("active", Some("shared")));
    let b = db.store.account_by_id(sla_id).await.unwrap();
    assert_eq!((b.pool_kind.map(PoolKind::as_str), b.pool_desired_nodes), (Some("dedicated"), Some(4)));
    let allocs = db.store.allocations(None, 10).await.unwrap();
    assert_eq!(allocs.len(), 2);
    assert!(allocs.iter().any(|r| r.account_id == sla_id
        && r.offer == OfferKind::Sla
        && r.sla_mbps == Some(300)
        && r.state == AccountState::Active));
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM shared_pools").await, 1);
    assert_eq!(raw_count(&db.url, "SELECT CAST(accounts AS BIGINT) FROM shared_pools").await, 1);

    // payg -> sla: a dedicated pool, the shared pool lets go of the account.
    let row = db.store.account_by_id(trial).await.unwrap();
    let op = NewOperation { account_id: Some(trial), ..NewOperation::new(OperationKind::ChangeOffer) };
    db.store
        .change_account(
            &row,
            &AccountChange::Update { offer: Some(sla(100)), ip_allow: None, allow_origins: None },
            &op,
            &AccountLimits::NONE,
            "test",
            T0,
        )
        .await
        .unwrap();
    drain(&w).await;
    let a = db.store.account_by_id(trial).await.unwrap();
    assert_eq!((a.pool_kind.map(PoolKind::as_str), a.pool_desired_nodes), (Some("dedicated"), Some(2)));
    assert_eq!(raw_count(&db.url, "SELECT CAST(accounts AS BIGINT) FROM shared_pools").await, 0);
    let dedicated = a.pool_id.unwrap();

    // sla -> payg: back to the shared pool; the dedicated pool is released.
    let op = NewOperation { account_id: Some(trial), ..NewOperation::new(OperationKind::ChangeOffer) };
    db.store
        .change_account(
            &a,
            &AccountChange::Update { offer: Some(Offer::Payg), ip_allow: None, allow_origins: None },
            &op,
            &AccountLimits::NONE,
            "test",
            T0,
        )
        .await
        .unwrap();
    drain(&w).await;
    let a = db.store.account_by_id(trial).await.unwrap();
    assert_eq!(a.pool_kind.map(PoolKind::as_str), Some("shared"));
    let released = db.store.pools(None, 10).await.unwrap().into_iter().find(|p| p.id == dedicated).unwrap();
    assert_eq!((released.state.as_str(), released.desired_nodes), ("deleting", 0));

    // Deactivate keeps the pool (retained), delete releases everything.
    let b = db.store.account_by_id(sla_id).await.unwrap();
    let op = NewOperation { account_id: Some(sla_id), ..NewOperation::new(OperationKind::Deactivate) };
    db.store
        .change_account(
            &b,
            &AccountChange::Deactivate { retain_until: T0 + 7 * 86_400_000 },
            &op,
            &AccountLimits::NONE,
            "test",
            T0,
        )
        .await
        .unwrap();
    drain(&w).await;
    let b = db.store.account_by_id(sla_id).await.unwrap();
    assert_eq!((b.state.as_str(), b.retain_until), ("deactivated", Some(T0 + 7 * 86_400_000)));
    let pool = db.store.pools(None, 10).await.unwrap().into_iter().find(|p| Some(p.id) == b.pool_id).unwrap();
    assert_eq!(pool.state, PoolState::Retained);
    let op = NewOperation { account_id: Some(sla_id), ..NewOperation::new(OperationKind::Delete) };
    db.store
        .change_account(&b, &AccountChange::Delete { name_until: T0 }, &op, &AccountLimits::NONE, "test", T0)
        .await
        .unwrap();
    drain(&w).await;
    assert!(db.store.allocations(None, 10).await.unwrap().iter().all(|r| r.account_id != sla_id));
    assert!(matches!(db.store.account("bo-vod", None).await, Err(StoreError::NotFound)));
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM allocation_operations WHERE state <> 'succeeded'").await, 0);
    // A reactivate of a deleted account is refused and enqueues nothing.
    let op = NewOperation { account_id: Some(sla_id), ..NewOperation::new(OperationKind::Reactivate) };
    let gone = db.store.account_by_id(sla_id).await.unwrap();
    assert!(matches!(
        db.store.change_account(&gone, &AccountChange::Reactivate, &op, &AccountLimits::NONE, "t", T0).await,
        Err(StoreError::InvalidState(_))
    ));
    assert_eq!(db.store.open_operations().await.unwrap(), 0);
}

async fn a_crashed_worker_is_resumed_after_its_last_step(db: TestDb) {
    seeded(&db).await;
    let clock = ManualClock::new(T0);
    let bo = customer(&db, "bo@example.com").await;
    let id = Uuid::now_v7();
    db.store
        .create_account(&new_account(bo, "bo-vod", "hls", sla(300)), &create_op(id, bo), &AccountLimits::NONE, T0)
        .await
        .unwrap();

    // A worker claims the operation, finishes its first step, and dies.
    let op = db.store.claim_operation("doomed", T0, LEASE_MS).await.unwrap().unwrap();
    let effect = Effect::PreparePool { account_id: id, dedicated_nodes: 4 };
    db.store.complete_step(&op, "doomed", "pool_prepared", Some(&effect), false, T0 + 1).await.unwrap();

    // Nobody may take it over while the lease holds.
    let w = worker(&db, &clock);
    assert!(!w.run_once().await.unwrap());
    clock.advance_ms(LEASE_MS + 1);
    assert!(w.run_once().await.unwrap());

    let done = db.store.operation(op.id, OperationFilter::Any).await.unwrap();
    assert_eq!(done.state, OperationState::Succeeded);
    assert_eq!(done.attempts, 2);
    let names: Vec<_> = done.steps.0.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["pool_prepared", "pool_assigned", "allocation_recorded"], "no step ran twice");
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM pools WHERE kind = 'dedicated'").await, 1, "no second pool");
    assert_eq!(db.store.account_by_id(id).await.unwrap().state, AccountState::Active);
}

async fn idempotency_records(db: TestDb) {
    let h1 = [1u8; 32];
    let h2 = [2u8; 32];
    assert_eq!(db.store.start_idempotent("p", "k", &h1, T0, OLD).await.unwrap(), IdempotencyStart::Run);
    assert_eq!(db.store.start_idempotent("p", "k", &h1, T0, OLD).await.unwrap(), IdempotencyStart::InFlight);
    db.store.finish_idempotent("p", "k", 202, "{\"a\":1}").await.unwrap();
    assert_eq!(
        db.store.start_idempotent("p", "k", &h1, T0, OLD).await.unwrap(),
        IdempotencyStart::Replay { status: 202, body: "{\"a\":1}".into() }
    );
    assert_eq!(db.store.start_idempotent("p", "k", &h2, T0, OLD).await.unwrap(), IdempotencyStart::Mismatch);
    // Keys are per principal.
    assert_eq!(db.store.start_idempotent("q", "k", &h2, T0, OLD).await.unwrap(), IdempotencyStart::Run);
    // A server error forgets the key so a retry runs.
    db.store.finish_idempotent("q", "k", 503, "").await.unwrap();
    assert_eq!(db.store.start_idempotent("q", "k", &h2, T0, OLD).await.unwrap(), IdempotencyStart::Run);
    // A day later the key is forgotten: the same key runs again, with any body.
    let later = T0 + 86_400_001;
    assert_eq!(
        db.store.start_idempotent("p", "k", &h2, later, later - 86_400_000).await.unwrap(),
        IdempotencyStart::Run
    );
    // The collector drops records older than a day.
    db.store.finish_idempotent("q", "k", 201, "{}").await.unwrap();
    assert_eq!(db.store.forget_idempotency_keys(T0 + 1).await.unwrap(), 1, "q's record (made at T0) goes, p's stays");
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM idempotency_keys").await, 1);
}

/// Records made at `T0` are not expired for these checks.
const OLD: i64 = T0 - 86_400_000;

async fn paging_and_events(db: TestDb) {
    seeded(&db).await;
    for i in 0..5 {
        customer(&db, &format!("c{i}@example.com")).await;
    }
    let first = db.store.events(None, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let rest = db.store.events(Some(first[2].id), 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|e| e.action == "customer.created"));
    assert!(db.store.ready().await.unwrap());
    assert_eq!(
        db.store.origin_types().await.unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["dash", "hls", "jit"]
    );
}

/// Quotas hold inside the transaction that makes the change: accounts per
/// customer, the SLAs of its serving accounts added up, and concurrent sign-ups
/// racing for the last place never both get it.
async fn quotas_hold_inside_the_transaction(db: TestDb) {
    seeded(&db).await;
    db.store
        .create_origin_type("cmaf", &headwater_admin::store::OriginTypeSettings::DEFAULT, "test", T0)
        .await
        .unwrap();
    let ana = customer(&db, "ana@example.com").await;
    let limits = AccountLimits { max_accounts: 2, max_total_sla_mbps: 300 };
    let make = |name: &'static str, t: &'static str, offer: Offer| {
        let store = db.store.clone();
        async move {
            let id = Uuid::now_v7();
            store.create_account(&new_account(ana, name, t, offer), &create_op(id, ana), &limits, T0).await
        }
    };
    make("ana-sla", "hls", sla(200)).await.unwrap();
    // 200 + 200 is past 300 Mbit/s: refused, nothing written.
    let err = make("ana-two", "dash", sla(200)).await.unwrap_err();
    assert!(matches!(err, StoreError::Quota { quota: "max_total_sla_mbps", .. }), "{err:?}");
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM accounts").await, 1);
    // Two accounts at most: the last place goes to one of two racing sign-ups.
    let (a, b) = tokio::join!(make("ana-dash", "dash", Offer::Trial), make("ana-cmaf", "cmaf", Offer::Trial));
    assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "{a:?} {b:?}");
    let lost = a.err().or(b.err()).unwrap();
    assert!(matches!(lost, StoreError::Quota { quota: "max_accounts", .. }), "{lost:?}");
    assert_eq!(raw_count(&db.url, "SELECT COUNT(*) FROM accounts").await, 2);
    // An offer change is checked without the account's own SLA counted twice.
    let row = db.store.account("ana-sla", None).await.unwrap();
    let change = AccountChange::Update { offer: Some(sla(300)), ip_allow: None, allow_origins: None };
    let op = NewOperation { account_id: Some(row.id), ..NewOperation::new(OperationKind::ChangeOffer) };
    db.store.change_account(&row, &change, &op, &limits, "test", T0).await.unwrap();
    let row = db.store.account("ana-sla", None).await.unwrap();
    let change = AccountChange::Update { offer: Some(sla(400)), ip_allow: None, allow_origins: None };
    let op = NewOperation { account_id: Some(row.id), ..NewOperation::new(OperationKind::ChangeOffer) };
    let err = db.store.change_account(&row, &change, &op, &limits, "test", T0).await.unwrap_err();
    assert!(matches!(err, StoreError::Quota { quota: "max_total_sla_mbps", .. }), "{err:?}");
    let used = db.store.quota_use(ana).await.unwrap();
    assert_eq!((used.accounts, used.total_sla_mbps), (2, 300));
}

/// Accounts staged to one shared pool in a steady stream: each changes the
/// pool's configuration, so the nodes are always a configuration behind the
/// newest. An operation waits for the nodes to serve its own account, not for
/// them to catch up with the newest (which they never would while sign-ups go on).
async fn an_account_is_configured_once_its_nodes_fetched_it_whatever_came_after(db: TestDb) {
    seeded(&db).await;
    let clock = ManualClock::new(T0);
    let mut w = worker(&db, &clock);
    w.wait_for_nodes = true;
    let (ana, bo) = (customer(&db, "ana@example.com").await, customer(&db, "bo@example.com").await);
    let (_, ana_op) = enqueue(&db, ana, "ana-vod").await;
    assert!(w.run_once().await.unwrap(), "ana's account is staged to a new shared pool and waits for a node");
    let pool = db.store.pools(None, 10).await.unwrap().pop().expect("the shared pool").id;
    let node = Uuid::now_v7();
    let (_, token) = keys::node_token(node);
    let (_, join) = keys::join_token(node);
    let placement = headwater_admin::store::Placement::default();
    db.store.register_node(node, pool, &token, &join, placement, "test", T0).await.unwrap();
    let fetch = || async {
        let serving = db.store.node_serving(node, clock.now_ms()).await.unwrap();
        let version = headwater_admin::control::node_config::node_config(node, &serving).version;
        db.store.set_config_fetched(node, version as i64, serving.generation, clock.now_ms()).await.unwrap();
        version as i64
    };
    let heartbeat = |config_version: i64| headwater_admin::store::HeartbeatRecord {
        state: headwater_protocol::NodeState::Ready,
        address: "127.0.0.1:9".into(),
        image_version: "test".into(),
        egress_mbps: 0.0,
        open_connections: 0,
        cache_hit_ratio: 0.0,
        config_version,
        probe_ok: true,
        probe_latency_ms: 1,
        probe_error: None,
        tls_address: None,
    };
    // The node comes up with ana's account in its configuration.
    let with_ana = fetch().await;
    db.store.record_heartbeats(&[(node, heartbeat(with_ana), T0 + 10)]).await.unwrap();
    // Bo signs up before ana's operation looks again: the pool's configuration
    // changes, and the node has not fetched it yet.
    let (bo_account, bo_op) = enqueue(&db, bo, "bo-vod").await;
    clock.advance_ms(50);
    assert!(w.run_once().await.unwrap(), "bo's account is staged while ana's waits out its pause");
    let current = headwater_admin::control::node_config::node_config(
        node,
        &db.store.node_serving(node, clock.now_ms()).await.unwrap(),
    );
    assert_ne!(current.version as i64, with_ana, "bo's staging changed the configuration");
    clock.advance_ms(2_000);
    drain(&w).await;
    let store = &db.store;
    let state = |id| async move { store.operation(id, OperationFilter::Any).await.unwrap().state };
    assert_eq!(state(ana_op).await, OperationState::Succeeded, "the node serves ana: done");
    assert_eq!(state(bo_op).await, OperationState::Running, "the node does not serve bo yet");
    // The node fetches the configuration with bo in it; a heartbeat it sent
    // before, still saying it runs ana's, is written after the fetch and does
    // not undo it: bo's account is done too.
    let with_bo = fetch().await;
    db.store.record_heartbeats(&[(node, heartbeat(with_ana), clock.now_ms() - 1)]).await.unwrap();
    let runs: Vec<i64> = db.store.account_node_configs(bo_account).await.unwrap().iter().map(|n| n.running).collect();
    assert_eq!(runs, [with_bo], "the stale heartbeat left the fetched version");
    clock.advance_ms(2_000);
    drain(&w).await;
    assert_eq!(state(bo_op).await, OperationState::Succeeded);
}

/// The change stamps move with every committed change to what they cover, and
/// only then: heartbeats that change neither a node's state nor its addresses
/// move neither. Heartbeats answer from a pool's read while the stamp stands.
async fn change_stamps_move_with_what_they_cover(db: TestDb) {
    use headwater_admin::control::node_config::{SERVING_MAX_AGE_MS, ServingCache, node_config};
    seeded(&db).await;
    let clock = ManualClock::new(T0);
    let w = worker(&db, &clock);
    let store = &db.store;
    let r0 = store.routing_stamp().await.unwrap();
    let ana = customer(&db, "ana@example.com").await;
    let (account, _) = enqueue(&db, ana, "ana-vod").await;
    assert!(store.routing_stamp().await.unwrap() > r0, "a new account is routed");
    let bo = customer(&db, "bo@example.com").await;
    let bo_account = Uuid::now_v7();
    store
        .create_account(
            &new_account(bo, "bo-vod", "hls", sla(100)),
            &create_op(bo_account, bo),
            &AccountLimits::NONE,
            T0,
        )
        .await
        .unwrap();
    drain(&w).await;
    let pool = store.account_by_id(account).await.unwrap().pool_id.expect("ana's pool");
    let bo_pool = store.account_by_id(bo_account).await.unwrap().pool_id.expect("bo's pool");
    assert_ne!(pool, bo_pool, "bo's SLA has a pool of its own");
    // Staged, then mapped: the pool serves the account.
    assert!(store.serving_stamp(pool).await.unwrap() > 0);
    let bo_stamp = store.serving_stamp(bo_pool).await.unwrap();
    let stamps = || async move { (store.routing_stamp().await.unwrap(), store.serving_stamp(pool).await.unwrap()) };
    let node = Uuid::now_v7();
    let (_, token) = keys::node_token(node);
    let (_, join) = keys::join_token(node);
    let s2 = stamps().await;
    store
        .register_node(node, pool, &token, &join, headwater_admin::store::Placement::default(), "test", T0)
        .await
        .unwrap();
    let s3 = stamps().await;
    assert!(s3.0 > s2.0 && s3.1 > s2.1, "a new node moves both: {s2:?} -> {s3:?}");
    let heartbeat = |egress_mbps: f64, tls_address: Option<&str>| headwater_admin::store::HeartbeatRecord {
        state: headwater_protocol::NodeState::Ready,
        address: "127.0.0.1:9".into(),
        image_version: "test".into(),
        egress_mbps,
        open_connections: 0,
        cache_hit_ratio: 0.0,
        config_version: 0,
        probe_ok: true,
        probe_latency_ms: 1,
        probe_error: None,
        tls_address: tls_address.map(str::to_owned),
    };
    store.record_heartbeats(&[(node, heartbeat(0.0, None), T0 + 1)]).await.unwrap();
    let s4 = stamps().await;
    assert!(s4.0 > s3.0 && s4.1 > s3.1, "a node turning ready moves both: {s3:?} -> {s4:?}");
    store.record_heartbeats(&[(node, heartbeat(12.5, None), T0 + 2)]).await.unwrap();
    assert_eq!(stamps().await, s4, "a heartbeat with only new load moves neither");
    store.record_heartbeats(&[(node, heartbeat(12.5, Some("127.0.0.1:10")), T0 + 3)]).await.unwrap();
    let s5 = stamps().await;
    assert!(s5.0 > s4.0 && s5.1 == s4.1, "a new TLS address is routed, not served: {s4:?} -> {s5:?}");

    // A heartbeat's answer comes from the pool's read until the stamp moves.
    let cache = ServingCache::default();
    let read = |at: i64| {
        let cache = &cache;
        async move { cache.get(store, node, &store.node_at_stamp(node).await.unwrap(), at).await.unwrap() }
    };
    let first = read(T0 + 10).await;
    assert!(Arc::ptr_eq(&first, &read(T0 + 11).await), "nothing changed: the same read");
    let row = store.account_by_id(account).await.unwrap();
    let change = AccountChange::Update {
        offer: None,
        ip_allow: Some(IpAllow::parse(&["192.0.2.0/24".into()]).unwrap()),
        allow_origins: None,
    };
    let op = NewOperation { account_id: Some(account), ..NewOperation::new(OperationKind::Update) };
    store.change_account(&row, &change, &op, &AccountLimits::NONE, "test", T0 + 12).await.unwrap();
    let s6 = stamps().await;
    assert!(s6.0 > s5.0 && s6.1 > s5.1, "an account's allow-list moves both: {s5:?} -> {s6:?}");
    let after = read(T0 + 13).await;
    let fresh = store.node_serving(node, T0 + 13).await.unwrap();
    assert_eq!(after.accounts[0].ip_allow.0, ["192.0.2.0/24"]);
    assert_eq!(node_config(node, &after).version, node_config(node, &fresh).version);
    assert_ne!(node_config(node, &after).version, node_config(node, &first).version);
    assert_eq!(store.serving_stamp(bo_pool).await.unwrap(), bo_stamp, "bo's pool serves what it did");
    // Time alone changes what a pool serves too (a move's grace ends): a read
    // is kept no longer than its age.
    assert!(!Arc::ptr_eq(&after, &read(T0 + 13 + SERVING_MAX_AGE_MS).await), "read again once old");
}

/// A burst of sign-ups staged before any is assigned still fills shared pools
/// up to the policy's limit, not one pool with all of them.
async fn staged_accounts_count_toward_a_shared_pools_load(db: TestDb) {
    seeded(&db).await;
    let clock = ManualClock::new(T0);
    let mut w = worker(&db, &clock);
    // Without nodes, every operation stages its account and waits.
    w.wait_for_nodes = true;
    let per_pool = headwater_provisioner::Policy::DEFAULT.max_tenants_per_shared_pool;
    for i in 0..=per_pool {
        // One account of a type per customer.
        let c = customer(&db, &format!("burst-{i}@example.com")).await;
        enqueue(&db, c, &format!("burst-{i}")).await;
    }
    while w.run_once().await.unwrap() {}
    let pools: Vec<_> =
        db.store.pools(None, 10).await.unwrap().into_iter().filter(|p| p.kind == PoolKind::Shared).collect();
    assert_eq!(pools.len(), 2, "{} accounts make two pools", per_pool + 1);
    let total = raw_count(&db.url, "SELECT COUNT(*) FROM accounts WHERE staged_pool_id IS NOT NULL").await;
    assert_eq!(total, per_pool + 1, "every account is staged");
    let fullest = raw_count(
        &db.url,
        "SELECT MAX(c) FROM (SELECT COUNT(*) AS c FROM accounts WHERE staged_pool_id IS NOT NULL GROUP BY staged_pool_id) t",
    )
    .await;
    assert_eq!(fullest, per_pool, "the first pool takes what the policy allows, the second the rest");
}

on_both_backends!(
    staged_accounts_count_toward_a_shared_pools_load,
    change_stamps_move_with_what_they_cover,
    an_account_is_configured_once_its_nodes_fetched_it_whatever_came_after,
    quotas_hold_inside_the_transaction,
    customers_keys_and_unique_emails,
    account_rules_live_in_the_schema,
    sla_increment_changes_are_checked_against_existing_accounts,
    queue_claims_with_leases_in_order,
    operations_of_one_account_run_one_at_a_time,
    concurrent_claims_never_share_an_operation,
    worker_keeps_pool_and_allocation_tables_true,
    a_crashed_worker_is_resumed_after_its_last_step,
    idempotency_records,
    paging_and_events,
);
