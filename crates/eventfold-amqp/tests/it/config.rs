//! The password never shows in logs or errors.

use std::time::Duration;

use eventfold_amqp::{AmqpConfig, AmqpError, ConfirmedPublisher, PublisherOptions};

const SECRET: &str = "s3cr3t-Pa55word";

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} leaks the password: {text}");
    assert!(
        !text.contains("Pa55"),
        "{what} leaks part of the password: {text}"
    );
}

#[test]
fn debug_and_display_are_redacted() {
    let c = AmqpConfig::from_url(&format!("amqp://app:{SECRET}@broker.example:5673/prod"))
        .unwrap()
        .with_connection_name("svc")
        .with_heartbeat(15);
    assert_eq!(c.redacted_url(), "amqp://app:***@broker.example:5673/prod");
    assert_eq!(c.to_string(), c.redacted_url());
    assert_no_secret("Debug", &format!("{c:?}"));
    assert_eq!(c.vhost(), "prod");
    assert_eq!(c.heartbeat(), 15);
    assert_eq!(c.connection_name(), "svc");
    let default_vhost = AmqpConfig::from_url("amqp://guest:guest@localhost").unwrap();
    assert_eq!(default_vhost.vhost(), "/");
    assert_eq!(
        default_vhost.heartbeat(),
        AmqpConfig::DEFAULT_HEARTBEAT_SECS
    );
}

#[test]
fn a_bad_url_does_not_echo_the_password() {
    for url in [
        format!("amqp://app:{SECRET}@"),
        format!("amqps://app:{SECRET}@host/vhost"),
        format!("amqp://app:{SECRET}@host:notaport/v"),
        format!("amqp://app:{SECRET}@host/v?heartbeat=x"),
        format!("mailto:app:{SECRET}@host"),
    ] {
        let err = AmqpConfig::from_url(&url).unwrap_err();
        assert!(matches!(err, AmqpError::Config { .. }), "{url}: {err:?}");
        assert_no_secret("Display", &err.to_string());
        assert_no_secret("Debug", &format!("{err:?}"));
    }
}

#[tokio::test]
async fn a_wrong_password_is_access_refused_without_the_password() {
    // The login fails before any vhost is looked at: "/" is untouched.
    let config =
        AmqpConfig::from_url(&format!("amqp://guest:{SECRET}@127.0.0.1:5672/%2f")).unwrap();
    let err = ConfirmedPublisher::connect(config, PublisherOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, AmqpError::AccessRefused { .. }), "{err:?}");
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
    assert!(err.to_string().contains("guest:***@127.0.0.1"), "{err}");
}

#[tokio::test]
async fn an_unreachable_broker_is_unavailable_without_the_password() {
    // Port 1 on loopback: nothing listens there.
    let config = AmqpConfig::from_url(&format!("amqp://guest:{SECRET}@127.0.0.1:1/v"))
        .unwrap()
        .with_connect_timeout(Duration::from_secs(2));
    let err = ConfirmedPublisher::connect(config, PublisherOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_no_secret("Display", &err.to_string());
    assert_no_secret("Debug", &format!("{err:?}"));
}
