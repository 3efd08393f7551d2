//! The service's commands on a SQLite file, without HTTP or a broker: races and the one
//! transaction of the event and the master row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use eventfold::{Application, Config, SqlValue};
use orders_example::order::Order;
use orders_example::row::OrderRow;
use orders_example::service::{Orders, ServiceError};

async fn open(dir: &tempfile::TempDir) -> (Arc<Application>, Orders) {
    let config = Config::sqlite(dir.path().join("orders.sqlite3")).aggregate::<Order>();
    let app = Arc::new(config.application().await.unwrap());
    let mut tx = app.begin().await.unwrap();
    OrderRow::create_table(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    (app.clone(), Orders::new(app, OrderRow::master()))
}

async fn revision(app: &Application, id: &str) -> Option<i64> {
    let mut tx = app.begin().await.unwrap();
    OrderRow::revision(&mut tx, id).await.unwrap()
}

/// Concurrent commands without `expected_version` all land: a lost race reloads and runs
/// again. The writers all decide on the same version before any saves (a barrier in
/// their first decision), so three of them lose at least once; each loses at most once
/// per other writer, within the attempts.
#[test]
fn concurrent_commands_lose_no_update() {
    const WRITERS: usize = 4;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (app, orders) = runtime.block_on(open(&dir));
    let id = runtime.block_on(orders.place("ada")).unwrap().id;
    let decided = Arc::new(Barrier::new(WRITERS));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (orders, decided) = (orders.clone(), decided.clone());
            // A thread and a runtime each: the barrier blocks only its own writer.
            std::thread::spawn(move || {
                let first = AtomicBool::new(true);
                let sku = format!("sku-{i}");
                let add = |o: &Order| {
                    if first.swap(false, Ordering::SeqCst) {
                        decided.wait();
                    }
                    o.add_line(&sku, 1, 100)
                };
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(orders.command(id, None, add))
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap().unwrap();
    }
    runtime.block_on(async {
        let order = app.repository().get::<Order>(&id).await.unwrap();
        assert_eq!((order.version(), order.lines.len()), (5, WRITERS));
        assert_eq!(revision(&app, &id.to_string()).await, Some(4));
    });
}

/// With `expected_version`, a stale command is a conflict, not retried, and writes
/// nothing.
#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let (app, orders) = open(&dir).await;
    let id = orders.place("ada").await.unwrap().id;
    orders
        .command(id, Some(1), |o| o.add_line("tea", 1, 100))
        .await
        .unwrap();
    let stale = orders
        .command(id, Some(1), |o| o.add_line("cup", 1, 100))
        .await
        .unwrap_err();
    assert!(
        matches!(stale, ServiceError::Store(ref e) if e.is_conflict()),
        "{stale:?}"
    );
    assert_eq!(stale.status().1, "conflict");
    let order = app.repository().get::<Order>(&id).await.unwrap();
    assert_eq!(order.version(), 2);
    assert_eq!(revision(&app, &id.to_string()).await, Some(1));
}

/// The event and the master row commit together: when the row cannot be saved, the
/// event is not stored either.
#[tokio::test]
async fn no_event_without_its_master_row() {
    let dir = tempfile::tempdir().unwrap();
    let (app, orders) = open(&dir).await;
    let id = orders.place("ada").await.unwrap().id;
    let mut tx = app.begin().await.unwrap();
    tx.execute(
        "DELETE FROM orders WHERE id = $1",
        &[SqlValue::from(id.to_string())],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let failed = orders
        .command(id, None, |o| o.add_line("tea", 1, 100))
        .await
        .unwrap_err();
    assert!(
        matches!(
            failed,
            ServiceError::Master(eventfold_cqrs::master::Error::RowNotFound { .. })
        ),
        "{failed:?}"
    );
    assert_eq!(failed.status().1, "internal");
    assert_eq!(
        app.repository().get::<Order>(&id).await.unwrap().version(),
        1
    );
}
