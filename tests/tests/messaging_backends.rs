//! The same contract, run against every broker backend through the `Broker` trait: topic
//! routing with wildcards, acks, redelivery of what was not acked, dead letters and their
//! replay to one subscriber, and a broker that is down. Embedded runs everywhere; RabbitMQ and
//! NATS run against the real servers on loopback (modules `needs_rabbitmq`, `needs_nats`).

use std::collections::BTreeSet;
use std::time::Duration;

use mosaic::capability::messaging::{
    embedded::EmbeddedBroker, nats::NatsBroker, rabbitmq::RabbitMqBroker, Consumer, Delivery, SharedBroker,
    SubscriptionSpec,
};
use mosaic_tests::{require_service, unique};

const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The embedded broker, in a directory of its own.
async fn embedded() -> (SharedBroker, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let embedded = EmbeddedBroker::open(&dir.path.join("broker.db"))
        .await
        .expect("embedded broker");
    (std::sync::Arc::new(embedded), dir)
}

/// A RabbitMQ broker in a namespace of its own; the test fails where the server is not running.
async fn rabbitmq() -> (SharedBroker, tempdir::Dir) {
    require_service("RabbitMQ", "127.0.0.1:5672");
    let broker = RabbitMqBroker::connect(RABBITMQ_URL, &unique("conformance"))
        .await
        .expect("rabbitmq broker");
    (std::sync::Arc::new(broker), tempdir::Dir::new())
}

/// A NATS broker in a namespace of its own; the test fails where the server is not running.
async fn nats() -> (SharedBroker, tempdir::Dir) {
    require_service("NATS", "127.0.0.1:4222");
    let broker = NatsBroker::connect(NATS_URL, &unique("conformance"))
        .await
        .expect("nats broker");
    (std::sync::Arc::new(broker), tempdir::Dir::new())
}

mod tempdir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(mosaic_tests::unique("mosaic-broker"));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn spec(subscriber: &str, patterns: &[&str]) -> SubscriptionSpec {
    SubscriptionSpec {
        subscriber: subscriber.to_string(),
        patterns: patterns.iter().map(|p| p.to_string()).collect(),
    }
}

async fn next_within(consumer: &mut Box<dyn Consumer>, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Ok(delivery)) => Some(delivery),
        Ok(Err(err)) => panic!("consumer failed: {err}"),
        Err(_) => None,
    }
}

/// Takes and acks every delivery until none arrives for `quiet`; returns their topics.
async fn drain_topics(consumer: &mut Box<dyn Consumer>, quiet: Duration) -> Vec<String> {
    let mut topics = Vec::new();
    while let Some(delivery) = next_within(consumer, quiet).await {
        topics.push(delivery.topic.clone());
        delivery.ack().await.expect("ack");
    }
    topics
}

async fn wildcard_routing_is_identical_on_every_backend((broker, _dir): (SharedBroker, tempdir::Dir)) {
    let subscriptions = [
        spec("exact", &["order.created"]),
        spec("one-word", &["order.*"]),
        spec("many-words", &["order.#"]),
        spec("leading", &["*.paid"]),
        spec("middle", &["a.#.z"]),
        spec("everything", &["#"]),
        spec("two-patterns", &["order.created", "payment.#"]),
    ];
    let topics = [
        "order",
        "order.created",
        "order.created.eu",
        "order.paid",
        "payment.paid",
        "payment",
        "a.z",
        "a.b.c.z",
        "a.b.c",
        "unrelated",
    ];
    let expected: &[(&str, &[&str])] = &[
        ("exact", &["order.created"]),
        ("one-word", &["order.created", "order.paid"]),
        (
            "many-words",
            &["order", "order.created", "order.created.eu", "order.paid"],
        ),
        ("leading", &["order.paid", "payment.paid"]),
        ("middle", &["a.b.c.z", "a.z"]),
        ("everything", &topics),
        ("two-patterns", &["order.created", "payment", "payment.paid"]),
    ];
    broker.declare(&subscriptions).await.expect("declare");
    for topic in topics {
        broker
            .publish(topic, topic.as_bytes(), None)
            .await
            .unwrap_or_else(|err| panic!("{}: publish {topic}: {err}", broker.kind()));
    }
    for (subscriber, wanted) in expected {
        let subscription = subscriptions.iter().find(|s| s.subscriber == *subscriber).unwrap();
        let mut consumer = broker.consume(subscription, 16).await.expect("consume");
        let got: BTreeSet<String> = drain_topics(&mut consumer, Duration::from_millis(700))
            .await
            .into_iter()
            .collect();
        let wanted: BTreeSet<String> = wanted.iter().map(|t| t.to_string()).collect();
        assert_eq!(got, wanted, "{}: subscriber `{subscriber}`", broker.kind());
    }
}

async fn unacked_messages_come_back_in_order_and_acked_ones_do_not((broker, _dir): (SharedBroker, tempdir::Dir)) {
    let subscription = spec("worker", &["jobs"]);
    let kind = broker.kind();
    broker
        .declare(std::slice::from_ref(&subscription))
        .await
        .expect("declare");
    for n in 0..5 {
        broker
            .publish("jobs", format!("job-{n}").as_bytes(), None)
            .await
            .expect("publish");
    }
    assert_eq!(broker.pending("worker").await.expect("pending"), 5, "{kind}");
    // Ack the first two; take the third and drop the consumer without settling it.
    {
        let mut consumer = broker.consume(&subscription, 1).await.expect("consume");
        for n in 0..2 {
            let delivery = next_within(&mut consumer, Duration::from_secs(5))
                .await
                .expect("delivery");
            assert_eq!(delivery.payload, format!("job-{n}").as_bytes(), "{kind}");
            assert_eq!(delivery.attempts, 0, "{kind}: a first delivery");
            delivery.ack().await.expect("ack");
        }
        let unsettled = next_within(&mut consumer, Duration::from_secs(5))
            .await
            .expect("delivery");
        assert_eq!(unsettled.payload, b"job-2", "{kind}");
        unsettled.failed_attempt(1).await.expect("failed attempt");
        drop(unsettled);
    }
    // A new consumer (a restarted host) gets the unsettled one again, then the rest, in order.
    let mut consumer = broker.consume(&subscription, 1).await.expect("consume again");
    let mut payloads = Vec::new();
    while let Some(delivery) =
        next_within(&mut consumer, Duration::from_secs(if kind == "nats" { 40 } else { 5 })).await
    {
        payloads.push(String::from_utf8(delivery.payload.clone()).unwrap());
        if payloads.len() == 1 {
            assert!(
                delivery.attempts >= 1,
                "{kind}: the redelivery knows of an earlier attempt"
            );
        }
        delivery.ack().await.expect("ack");
        if payloads.len() == 3 {
            break;
        }
    }
    assert_eq!(payloads, ["job-2", "job-3", "job-4"], "{kind}");
    assert!(
        next_within(&mut consumer, Duration::from_millis(500)).await.is_none(),
        "{kind}: nothing more"
    );
    assert_eq!(broker.pending("worker").await.expect("pending"), 0, "{kind}");
}

async fn dead_letters_are_listed_and_replayed_to_their_subscriber_only((broker, _dir): (SharedBroker, tempdir::Dir)) {
    let failing = spec("failing", &["payment.*"]);
    let bystander = spec("bystander", &["payment.#"]);
    let kind = broker.kind();
    broker
        .declare(&[failing.clone(), bystander.clone()])
        .await
        .expect("declare");
    broker
        .publish("payment.refused", b"poison", None)
        .await
        .expect("publish");
    broker
        .publish("payment.binary", &[0xff, 0x00, 0x10], None)
        .await
        .expect("publish");

    let mut by_bystander = broker.consume(&bystander, 4).await.expect("consume");
    assert_eq!(
        drain_topics(&mut by_bystander, Duration::from_millis(700)).await.len(),
        2,
        "{kind}"
    );

    let mut consumer = broker.consume(&failing, 4).await.expect("consume");
    for _ in 0..2 {
        let delivery = next_within(&mut consumer, Duration::from_secs(5))
            .await
            .expect("delivery");
        delivery
            .dead_letter(5, "handler returned an error")
            .await
            .expect("dead letter");
    }
    assert!(
        next_within(&mut consumer, Duration::from_millis(500)).await.is_none(),
        "{kind}: dead letters leave the queue"
    );

    let letters = broker.dead_letters(Some("failing")).await.expect("list");
    assert_eq!(letters.len(), 2, "{kind}: {letters:?}");
    let poison = letters
        .iter()
        .find(|l| l.topic == "payment.refused")
        .expect("poison listed");
    assert_eq!(poison.payload.as_deref(), Some("poison"), "{kind}");
    assert_eq!(
        (poison.attempts, poison.error.as_str()),
        (5, "handler returned an error"),
        "{kind}"
    );
    let binary = letters
        .iter()
        .find(|l| l.topic == "payment.binary")
        .expect("binary listed");
    assert_eq!(
        binary.payload_bytes().expect("hex payload"),
        vec![0xff, 0x00, 0x10],
        "{kind}"
    );
    assert!(
        broker.dead_letters(Some("bystander")).await.expect("list").is_empty(),
        "{kind}"
    );

    // Replay one by id: it reaches the failing subscriber again, and nobody else.
    let replayed = broker
        .replay(Some("failing"), std::slice::from_ref(&poison.id))
        .await
        .expect("replay");
    assert_eq!(replayed.len(), 1, "{kind}");
    let delivery = next_within(&mut consumer, Duration::from_secs(5))
        .await
        .expect("replayed delivery");
    assert_eq!(
        (delivery.topic.as_str(), delivery.payload.as_slice()),
        ("payment.refused", &b"poison"[..]),
        "{kind}"
    );
    delivery.ack().await.expect("ack");
    assert!(
        drain_topics(&mut by_bystander, Duration::from_millis(700))
            .await
            .is_empty(),
        "{kind}: replay goes to one subscriber"
    );
    let left = broker.dead_letters(None).await.expect("list");
    assert_eq!(left.len(), 1, "{kind}: {left:?}");
    // Replay of everything left.
    assert_eq!(
        broker.replay(Some("failing"), &[]).await.expect("replay all").len(),
        1,
        "{kind}"
    );
    let delivery = next_within(&mut consumer, Duration::from_secs(5))
        .await
        .expect("replayed delivery");
    assert_eq!(delivery.payload, vec![0xff, 0x00, 0x10], "{kind}");
    delivery.ack().await.expect("ack");
    assert!(broker.dead_letters(None).await.expect("list").is_empty(), "{kind}");
    assert!(
        broker.replay(None, &["no-such-id".to_string()]).await.is_err(),
        "{kind}: an unknown id is an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_refuses_a_publish_quickly() {
    // Nothing listens on these ports.
    let rabbit = RabbitMqBroker::connect("amqp://guest:guest@127.0.0.1:1/%2f", &unique("down"))
        .await
        .expect("a broker object even while the server is down");
    let nats = NatsBroker::connect("nats://127.0.0.1:1", &unique("down"))
        .await
        .expect("a broker object even while the server is down");
    let brokers: [SharedBroker; 2] = [std::sync::Arc::new(rabbit), std::sync::Arc::new(nats)];
    for broker in brokers {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(20), broker.publish("order.created", b"x", None))
            .await
            .unwrap_or_else(|_| panic!("{}: publish hung", broker.kind()));
        let err = result.expect_err("publish to a broker that is down must fail");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}: took {:?}",
            broker.kind(),
            started.elapsed()
        );
        assert!(
            err.to_string().contains("127.0.0.1:1"),
            "{}: the error names the broker: {err}",
            broker.kind()
        );
    }
}

/// The contract's tests on one backend, as `<module>::<test>`, each on a broker of its own
/// (`open`). A backend with a server is tested in a module `needs_<server>` with its tests
/// ignored unless asked for, so that `cargo xtask test` runs them where the server answers and
/// cargo lists them as ignored elsewhere.
macro_rules! contract_on {
    ($open:expr $(, #[$attr:meta])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn wildcard_routing_is_identical_on_every_backend() {
            super::wildcard_routing_is_identical_on_every_backend($open.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn unacked_messages_come_back_in_order_and_acked_ones_do_not() {
            super::unacked_messages_come_back_in_order_and_acked_ones_do_not($open.await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn dead_letters_are_listed_and_replayed_to_their_subscriber_only() {
            super::dead_letters_are_listed_and_replayed_to_their_subscriber_only($open.await).await;
        }
    };
}

mod embedded {
    contract_on!(super::embedded());
}

mod needs_rabbitmq {
    contract_on!(super::rabbitmq(), #[ignore = "needs RabbitMQ on 127.0.0.1:5672"]);
}

mod needs_nats {
    contract_on!(super::nats(), #[ignore = "needs NATS on 127.0.0.1:4222"]);
}
