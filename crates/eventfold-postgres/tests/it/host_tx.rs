//! Saving aggregates inside the application's own transaction.

use eventfold_core::{
    Aggregate, Application, Conflict, Error, EventReader, ExpectedVersion, Root, StreamQuery,
};
use eventfold_postgres::PostgresTransactionExt;
use serde::{Deserialize, Serialize};

use crate::support::fresh;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Id = uuid::Uuid;
    type Event = AccountEvent;
    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Deposited { amount } = event {
            self.balance += amount;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_writes_both_rollback_neither() {
    let (store, _guard) = fresh("host").await;
    let ledger = format!("\"{}\".ledger", store.config().schema);
    sqlx::query(&format!(
        "CREATE TABLE {ledger} (account uuid PRIMARY KEY, note text)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let app = Application::builder(store.clone())
        .snapshot_every::<Account>(2)
        .cache(10)
        .build();

    let mut account = Root::<Account>::new(AccountEvent::Opened);
    account.trigger(AccountEvent::Deposited { amount: 5 });
    // The host opens its own sqlx transaction and hands it to the store.
    let mut tx = store.join(store.pool().begin().await.unwrap());
    sqlx::query(&format!("INSERT INTO {ledger} VALUES ($1, 'opened')"))
        .bind(account.id())
        .execute(tx.postgres().unwrap())
        .await
        .unwrap();
    let ids = app.save_in(&mut tx, &mut account).await.unwrap();
    assert_eq!(ids.len(), 2);
    tx.commit().await.unwrap();
    assert_eq!(account.saved_version(), 2);
    let loaded = app.repository().get::<Account>(account.id()).await.unwrap();
    assert_eq!((loaded.balance, loaded.version()), (5, 2));
    assert_eq!(
        store
            .select_snapshots(&account.id().to_string(), StreamQuery::all())
            .await
            .unwrap()
            .len(),
        1,
        "the due snapshot was written in the same transaction"
    );

    // Rolled back: no ledger row, no events; the in-memory copy is stale, and saving it
    // is a conflict rather than a gap in the stream. The cache never saw the rolled-back
    // version: it takes saves into a transaction only at the commit.
    account.trigger(AccountEvent::Deposited { amount: 7 });
    let mut tx = store.join(store.pool().begin().await.unwrap());
    sqlx::query(&format!(
        "UPDATE {ledger} SET note = 'deposit' WHERE account = $1"
    ))
    .bind(account.id())
    .execute(tx.postgres().unwrap())
    .await
    .unwrap();
    app.save_in(&mut tx, &mut account).await.unwrap();
    tx.rollback().await.unwrap();
    let note: String = sqlx::query_scalar(&format!("SELECT note FROM {ledger}"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(note, "opened");
    let stream = account.id().to_string();
    assert_eq!(
        store
            .select_events(&stream, StreamQuery::all())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(account.version(), 3, "the rolled-back copy is stale");
    account.trigger(AccountEvent::Deposited { amount: 1 });
    let err = app.save(&mut account).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let mut fresh = app.repository().get::<Account>(account.id()).await.unwrap();
    assert_eq!(
        (fresh.balance, fresh.version()),
        (5, 2),
        "reloaded from the store"
    );
    fresh.trigger(AccountEvent::Deposited { amount: 1 });
    app.save(&mut fresh).await.unwrap();
    assert_eq!(
        app.repository()
            .get::<Account>(account.id())
            .await
            .unwrap()
            .balance,
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_inside_a_host_transaction() {
    let (store, _guard) = fresh("hostconflict").await;
    let app = Application::builder(store.clone()).build();
    let mut account = Root::<Account>::new(AccountEvent::Opened);
    app.save(&mut account).await.unwrap();

    let mut first = app.repository().get::<Account>(account.id()).await.unwrap();
    let mut second = app.repository().get::<Account>(account.id()).await.unwrap();
    first.trigger(AccountEvent::Deposited { amount: 1 });
    second.trigger(AccountEvent::Deposited { amount: 2 });
    app.save(&mut first).await.unwrap();

    let mut tx = app.begin().await.unwrap();
    let err = app.save_in(&mut tx, &mut second).await.unwrap_err();
    match err {
        Error::Conflict(Conflict::Streams(expected)) => {
            assert_eq!(
                expected,
                vec![ExpectedVersion::new(account.id().to_string(), 1)]
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(second.saved_version(), 1, "not marked saved");
    tx.rollback().await.unwrap();
}
