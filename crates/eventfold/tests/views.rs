//! A read model written once runs on whichever store the configuration picks: no `match`
//! on the backend.
#![cfg(any(feature = "sqlite", feature = "postgres"))]

use eventfold::{
    async_trait, Aggregate, BoxError, Config, Envelope, Follower, Handles, Root, SqlValue,
    Subscriptions, Transaction, View,
};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Note {
    texts: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum NoteEvent {
    Written { text: String },
}

impl Aggregate for Note {
    const TYPE: &'static str = "Note";
    type Id = uuid::Uuid;
    type Event = NoteEvent;
    fn apply(&mut self, event: &NoteEvent) {
        let NoteEvent::Written { text } = event;
        self.texts.push(text.clone());
    }
}

/// `note_lengths(note, chars)`: portable SQL only.
struct NoteLengths;

#[async_trait]
impl View for NoteLengths {
    fn subscribe(to: &mut Subscriptions<Self>) {
        to.aggregate::<Note>();
    }

    async fn setup(&mut self, tx: &mut Transaction) -> Result<(), BoxError> {
        tx.execute(
            "CREATE TABLE IF NOT EXISTS note_lengths (note TEXT PRIMARY KEY, chars BIGINT NOT NULL)",
            &[],
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Handles<Note> for NoteLengths {
    async fn handle(&mut self, tx: &mut Transaction, e: Envelope<Note>) -> Result<(), BoxError> {
        let NoteEvent::Written { text } = e.event;
        tx.execute(
            "INSERT INTO note_lengths (note, chars) VALUES ($1, $2) \
             ON CONFLICT (note) DO UPDATE SET chars = note_lengths.chars + $2",
            &[e.id.to_string().into(), (text.len() as i64).into()],
        )
        .await?;
        Ok(())
    }
}

async fn run_on(config: Config) -> Vec<Vec<SqlValue>> {
    let app = config.aggregate::<Note>().application().await.unwrap();
    let mut note = Root::<Note>::new(NoteEvent::Written { text: "abc".into() });
    note.trigger(NoteEvent::Written { text: "de".into() });
    app.save(&mut note).await.unwrap();

    let mut follower = Follower::view(&app, "note-lengths", NoteLengths).build();
    assert_eq!(follower.catch_up().await.unwrap(), 2);
    assert_eq!(follower.catch_up().await.unwrap(), 0);

    let mut tx = app.begin().await.unwrap();
    let rows = tx
        .query(
            "SELECT note, chars FROM note_lengths WHERE note = $1",
            &[note.id().to_string().into()],
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        [vec![
            SqlValue::Text(note.id().to_string()),
            SqlValue::Integer(5)
        ]]
    );
    rows
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_view_with_portable_sql_runs_on_sqlite_from_config() {
    let dir = tempfile::tempdir().unwrap();
    run_on(Config::sqlite(dir.path().join("notes.sqlite3"))).await;
}

/// Chosen by the environment as the application is: `EVENTFOLD_STORE=postgres` runs the
/// same code there (in a scratch schema, dropped afterwards; the view's table is
/// unqualified, so it lands on the connection's search path, and is dropped too).
#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_view_with_portable_sql_runs_on_postgres_from_config() {
    let Ok(url) = std::env::var("EVENTFOLD_TEST_DATABASE_URL") else {
        eprintln!("EVENTFOLD_TEST_DATABASE_URL unset: skipped");
        return;
    };
    let schema = format!("eventfold_test_views_{}", uuid::Uuid::new_v4().simple());
    let config = Config::from_vars([
        ("EVENTFOLD_STORE", "postgres"),
        ("EVENTFOLD_DATABASE_URL", url.as_str()),
        ("EVENTFOLD_POSTGRES_SCHEMA", schema.as_str()),
    ])
    .unwrap();
    let app = config.clone().application().await.unwrap();
    run_on(config).await;
    let mut tx = app.begin().await.unwrap();
    tx.execute("DROP TABLE IF EXISTS note_lengths", &[])
        .await
        .unwrap();
    tx.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// The store of `Config::open_store` serves the application and the follower alike.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_opened_store_is_shared_by_application_and_follower() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::sqlite(dir.path().join("notes.sqlite3")).aggregate::<Note>();
    let store = config.open_store().await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    let app = config.application_on(store.clone()).unwrap();
    let mut note = Root::<Note>::new(NoteEvent::Written { text: "x".into() });
    app.save(&mut note).await.unwrap();
    let mut follower = Follower::view(&app, "note-lengths", NoteLengths).build();
    assert_eq!(follower.catch_up().await.unwrap(), 1);
    use eventfold::TrackingReader;
    assert_eq!(
        store.tracking_position("note-lengths").await.unwrap(),
        Some(1)
    );
}
