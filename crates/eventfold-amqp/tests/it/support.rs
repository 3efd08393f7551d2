//! A virtual host per test, and a raw lapin channel to inspect queues (both from
//! eventfold-testkit); here, the vhost's name and the config the tests give eventfold-amqp.

use std::ops::Deref;

use eventfold_amqp::AmqpConfig;

/// A fresh virtual host `ef-test-<random>` ([`eventfold_testkit::TestVhost`]), deleted on
/// drop.
pub struct TestVhost(eventfold_testkit::TestVhost);

impl TestVhost {
    pub fn new() -> Self {
        TestVhost(eventfold_testkit::TestVhost::with_prefix("ef-test"))
    }

    pub fn config(&self) -> AmqpConfig {
        AmqpConfig::from_url(&self.url())
            .unwrap()
            .with_connection_name("eventfold-tests")
    }
}

impl Deref for TestVhost {
    type Target = eventfold_testkit::TestVhost;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
