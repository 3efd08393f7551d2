//! Saving aggregates inside the application's own transaction.

use eventfold_core::{Aggregate, Application, Error, EventReader, Root, StreamQuery};
use eventfold_postgres::save_in;
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
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {ledger} VALUES ($1, 'opened')"))
        .bind(account.id())
        .execute(&mut *tx)
        .await
        .unwrap();
    let ids = save_in(&app, &store, &mut tx, &mut [&mut account])
        .await
        .unwrap();
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
    // (through the cache, too) is a conflict rather than a gap in the stream.
    account.trigger(AccountEvent::Deposited { amount: 7 });
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!(
        "UPDATE {ledger} SET note = 'deposit' WHERE account = $1"
    ))
    .bind(account.id())
    .execute(&mut *tx)
    .await
    .unwrap();
    save_in(&app, &store, &mut tx, &mut [&mut account])
        .await
        .unwrap();
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
    let mut stale = app.repository().get::<Account>(account.id()).await.unwrap();
    assert_eq!(
        stale.version(),
        3,
        "the cache holds the rolled-back version"
    );
    stale.trigger(AccountEvent::Deposited { amount: 1 });
    let err = app.save(&mut stale).await.unwrap_err();
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

    let mut tx = store.pool().begin().await.unwrap();
    let err = save_in(&app, &store, &mut tx, &mut [&mut second])
        .await
        .unwrap_err();
    match err {
        Error::Conflict(conflict) => {
            assert_eq!(conflict.expected, vec![(account.id().to_string(), 1)]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(second.saved_version(), 1, "not marked saved");
    tx.rollback().await.unwrap();
}
