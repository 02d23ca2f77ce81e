//! Durable messaging end to end, through guests: the probe publishes with spin-sdk's
//! `redis::Connection::publish`, the `subscriber` fixture (a spin-sdk `#[redis_component]`)
//! reports each message to a sink in this test, which decides which attempts fail. Every case
//! runs on the embedded broker, and on RabbitMQ and NATS JetStream on loopback.

use std::time::Duration;

use mosaic::settings::{BrokerKind, MessagingSettings, Settings};
use mosaic_tests::sink::Sink;
use mosaic_tests::{client, deploy_request, require_service, send, unique, wait_until, AppDir, HttpClient};

const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_URL: &str = "nats://127.0.0.1:4222";

/// The broker settings of `kind`; the test fails where its server is not running.
fn broker(kind: BrokerKind) -> MessagingSettings {
    let url = match kind {
        BrokerKind::Embedded => None,
        BrokerKind::RabbitMQ => {
            require_service("RabbitMQ", "127.0.0.1:5672");
            Some(RABBITMQ_URL.to_string())
        }
        BrokerKind::Nats => {
            require_service("NATS", "127.0.0.1:4222");
            Some(NATS_URL.to_string())
        }
    };
    MessagingSettings {
        broker: kind,
        url,
        // Each test run gets queues of its own on the shared servers.
        namespace: Some(unique("test")),
        retry_initial_ms: 5,
        retry_max_ms: 100,
        ..MessagingSettings::default()
    }
}

fn settings(messaging: MessagingSettings) -> Settings {
    Settings {
        messaging,
        ..Settings::default()
    }
}

async fn publish(client: &HttpClient, base: &str, channel: &str, payload: &str) -> Result<(), String> {
    let reply = send(
        client,
        "POST",
        &format!("{base}/probe/publish?channel={channel}"),
        payload.to_string(),
    )
    .await?;
    if reply.status == 200 {
        Ok(())
    } else {
        Err(format!("{}: {}", reply.status, reply.body))
    }
}

/// Publishes `count` messages `{prefix}-{n}` through the probe from `clients` loops.
async fn publish_many(base: &str, channel: &str, prefix: &str, count: usize, clients: usize) {
    let mut loops = Vec::new();
    for first in 0..clients {
        let (base, channel, prefix) = (base.to_string(), channel.to_string(), prefix.to_string());
        loops.push(tokio::spawn(async move {
            let http = client();
            for n in (first..count).step_by(clients) {
                publish(&http, &base, &channel, &format!("{prefix}-{n}"))
                    .await
                    .unwrap_or_else(|err| panic!("publish {prefix}-{n}: {err}"));
            }
        }));
    }
    for publisher in loops {
        publisher.await.expect("publisher");
    }
}

async fn random_failures_lose_nothing(kind: BrokerKind) {
    let mut messaging = broker(kind);
    const COUNT: usize = 10_000;
    // A message fails 30% of its attempts; 20 attempts make a dead letter (0.3^20) practically
    // impossible, so every message must end handled.
    messaging.max_deliver = 20;
    messaging.concurrency = 16;
    let sink = Sink::start().await;
    sink.fail_percent(30);
    let dir = AppDir::new(&sink.manifest("orders.#"));
    let host = dir.start(settings(messaging)).await;
    let base = format!("http://{}", host.http_addr());

    publish_many(&base, "orders.created", "order", COUNT, 8).await;
    let all_handled = sink
        .wait_for(Duration::from_secs(240), |sink| sink.handled_count() == COUNT)
        .await;
    assert!(all_handled, "{kind:?}: {} of {COUNT} handled", sink.handled_count());
    for n in 0..COUNT {
        assert!(sink.handled(&format!("order-{n}")) >= 1, "{kind:?}: order-{n} lost");
    }
    let attempts = sink.total_attempts();
    assert!(
        attempts > (COUNT as u64) * 13 / 10,
        "{kind:?}: about 30% of attempts fail, so there were retries ({attempts})"
    );
    assert!(host
        .app()
        .capabilities()
        .messaging
        .broker
        .dead_letters(None)
        .await
        .expect("list")
        .is_empty());
    // Everything acked: nothing waits in the queue.
    let settled = wait_until(Duration::from_secs(10), || async {
        host.app()
            .capabilities()
            .messaging
            .broker
            .pending("subscriber")
            .await
            .ok()
            == Some(0)
    })
    .await;
    assert!(settled, "{kind:?}: messages left in the queue");
    let metrics = admin_get(&host, "/metrics").await;
    assert!(
        metrics.contains("mosaic_messages_published_total{topic=\"orders.created\"} 10000"),
        "{metrics}"
    );
    assert!(metrics.contains("mosaic_messages_acked_total{subscriber=\"subscriber\",topic=\"orders.created\"}"));
    assert!(metrics.contains("mosaic_messages_nacked_total{subscriber=\"subscriber\",topic=\"orders.created\"}"));
    host.shutdown().await;
}

/// Runs the `mosaic` CLI beside the test's manifest (it finds the in-process host through the
/// state directory) and returns its standard output; it must succeed.
async fn mosaic_cli(dir: &AppDir, args: &[&str]) -> String {
    let (path, args): (std::path::PathBuf, Vec<String>) =
        (dir.path.clone(), args.iter().map(|a| a.to_string()).collect());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(mosaic_tests::mosaic_bin())
            .current_dir(path)
            .args(&args)
            .output()
            .expect("mosaic runs")
    })
    .await
    .expect("cli");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

async fn admin_get(host: &mosaic::Host, path: &str) -> String {
    admin(host, "GET", path).await.body
}

async fn admin(host: &mosaic::Host, method: &str, path: &str) -> mosaic_tests::Reply {
    mosaic_tests::admin(host, method, path, Vec::new()).await
}

async fn poison_message_is_dead_lettered_and_replayed_after_a_fix(kind: BrokerKind) {
    let mut messaging = broker(kind);
    messaging.max_deliver = 3;
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("payment.*"));
    let host = dir.start(settings(messaging)).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();

    publish(&http, &base, "payment.failed", "poison-1")
        .await
        .expect("publish");
    publish(&http, &base, "payment.done", "fine-1").await.expect("publish");
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled("fine-1") == 1)
            .await,
        "{kind:?}"
    );
    // v1 fails every attempt at a poison message (without reaching the sink): after
    // max_deliver attempts it is a dead letter.
    let listed = wait_until(Duration::from_secs(20), || async {
        host.app()
            .capabilities()
            .messaging
            .broker
            .dead_letters(Some("subscriber"))
            .await
            .map(|l| l.len())
            .unwrap_or(0)
            == 1
    })
    .await;
    assert!(listed, "{kind:?}: the poison message reached the dead-letter store");
    let letters = admin(&host, "GET", "/v1/dlq?component=subscriber").await;
    assert_eq!(letters.status, 200, "{}", letters.body);
    let letters = letters.json();
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["payload"], "poison-1", "{kind:?}: {letters}");
    assert_eq!(letter["topic"], "payment.failed");
    assert_eq!(letter["attempts"], 3);
    assert!(
        letter["error"].as_str().unwrap().contains("returned an error"),
        "{kind:?}: {letters}"
    );
    assert_eq!(sink.handled("poison-1"), 0);
    let metrics = admin_get(&host, "/metrics").await;
    assert!(
        metrics.contains("mosaic_messages_dead_lettered_total{subscriber=\"subscriber\",topic=\"payment.failed\"} 1"),
        "{metrics}"
    );

    // The fixed handler (v2) goes live; a replay delivers the message to it.
    host.pipeline()
        .deploy(deploy_request("subscriber", "subscriber-v2"))
        .await
        .expect("deploy the fix");
    // The operator's view: `mosaic dlq list`, then `mosaic dlq replay ID`.
    let id = letter["id"].as_str().unwrap().to_string();
    let listed = mosaic_cli(&dir, &["dlq", "list"]).await;
    assert!(
        listed.contains(&id) && listed.contains("poison-1") && listed.contains("payment.failed"),
        "{listed}"
    );
    let replayed = mosaic_cli(&dir, &["dlq", "replay", "--component", "subscriber", &id]).await;
    assert!(replayed.contains("1 dead letter(s) replayed"), "{replayed}");
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled("poison-1") == 1)
            .await,
        "{kind:?}"
    );
    assert_eq!(sink.version_of("poison-1").as_deref(), Some("v2"));
    assert!(
        host.app()
            .capabilities()
            .messaging
            .broker
            .dead_letters(None)
            .await
            .expect("list")
            .is_empty(),
        "{kind:?}"
    );
    let unknown = admin(&host, "POST", "/v1/dlq/replay?ids=12345").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // A handler that traps fails its attempts the same way, and the host keeps delivering.
    publish(&http, &base, "payment.failed", "trap").await.expect("publish");
    publish(&http, &base, "payment.done", "fine-2").await.expect("publish");
    let trapped = wait_until(Duration::from_secs(20), || async {
        host.app()
            .capabilities()
            .messaging
            .broker
            .dead_letters(None)
            .await
            .ok()
            .and_then(|letters| letters.first().cloned())
            .is_some_and(|letter| letter.payload.as_deref() == Some("trap") && letter.error.contains("trapped"))
    })
    .await;
    assert!(
        trapped,
        "{kind:?}: the trapping message is a dead letter naming the trap"
    );
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled("fine-2") == 1)
            .await,
        "{kind:?}"
    );
    host.shutdown().await;
}

async fn order_is_kept_with_concurrency_one_even_across_retries(kind: BrokerKind) {
    let mut messaging = broker(kind);
    messaging.max_deliver = 20;
    messaging.concurrency = 1;
    let sink = Sink::start().await;
    sink.fail_percent(30);
    let dir = AppDir::new(&sink.manifest("steps"));
    let host = dir.start(settings(messaging)).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let sent: Vec<String> = (0..150).map(|n| format!("step-{n}")).collect();
    for payload in &sent {
        publish(&http, &base, "steps", payload).await.expect("publish");
    }
    assert!(
        sink.wait_for(Duration::from_secs(60), |s| s.handled_count() == sent.len())
            .await,
        "{kind:?}: {} handled",
        sink.handled_count()
    );
    assert_eq!(sink.order(), sent, "{kind:?}: handled in publish order");
    host.shutdown().await;
}

async fn a_subscriber_swapped_three_times_mid_stream_loses_nothing(kind: BrokerKind) {
    let mut messaging = broker(kind);
    messaging.concurrency = 4;
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("stream.*"));
    let host = dir.start(settings(messaging)).await;
    let base = format!("http://{}", host.http_addr());
    const COUNT: usize = 2_000;
    let publisher = tokio::spawn({
        let base = base.clone();
        async move { publish_many(&base, "stream.tick", "tick", COUNT, 4).await }
    });
    for fixture in ["subscriber-v2", "subscriber", "subscriber-v2"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        host.pipeline()
            .deploy(deploy_request("subscriber", fixture))
            .await
            .expect("swap");
    }
    publisher.await.expect("publisher");
    assert!(
        sink.wait_for(Duration::from_secs(90), |s| s.handled_count() == COUNT)
            .await,
        "{kind:?}: {} of {COUNT} handled",
        sink.handled_count()
    );
    let versions: std::collections::BTreeSet<String> = (0..COUNT)
        .filter_map(|n| sink.version_of(&format!("tick-{n}")))
        .collect();
    assert!(
        versions.contains("v1") && versions.contains("v2"),
        "{kind:?}: {versions:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_gives_the_publisher_an_error() {
    let sink = Sink::start().await;
    for (kind, url) in [
        (BrokerKind::RabbitMQ, "amqp://guest:guest@127.0.0.1:1/%2f"),
        (BrokerKind::Nats, "nats://127.0.0.1:1"),
    ] {
        let messaging = MessagingSettings {
            broker: kind,
            url: Some(url.to_string()),
            namespace: Some(unique("down")),
            ..MessagingSettings::default()
        };
        let dir = AppDir::new(&sink.manifest("events"));
        // The host starts although the broker is down; the subscription waits for it.
        let host = dir.start(settings(messaging)).await;
        let base = format!("http://{}", host.http_addr());
        let started = std::time::Instant::now();
        let err = publish(&client(), &base, "events", "lost?")
            .await
            .expect_err("a publish to a broker that is down fails");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{kind:?}: {:?}",
            started.elapsed()
        );
        assert!(err.starts_with("502") && err.contains("127.0.0.1:1"), "{kind:?}: {err}");
        // /readyz says the host is not ready, naming the broker; /metrics counts the failures.
        let readyz = mosaic_tests::get(&client(), &format!("http://{}/readyz", host.admin_addr())).await;
        assert_eq!(readyz.status, 503, "{kind:?}: {}", readyz.body);
        let broker_check = format!("broker {}", host.app().capabilities().messaging.broker.kind());
        let why = readyz.json()["failing"][&broker_check]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(why.contains("127.0.0.1:1"), "{kind:?}: {}", readyz.body);
        let metrics = admin_get(&host, "/metrics").await;
        assert!(
            metrics.contains(&format!(
                "mosaic_backend_errors_total{{capability=\"messaging\",backend=\"{}\"}}",
                host.app().capabilities().messaging.broker.kind()
            )),
            "{kind:?}: {metrics}"
        );
        host.shutdown().await;
    }
    // A bad channel name and an oversized payload are refused on every backend alike.
    let dir = AppDir::new(&sink.manifest("events"));
    let host = dir
        .start(settings(MessagingSettings {
            max_message_bytes: 16,
            ..MessagingSettings::default()
        }))
        .await;
    let base = format!("http://{}", host.http_addr());
    let err = publish(&client(), &base, "bad..name", "x")
        .await
        .expect_err("bad channel");
    assert!(err.contains("empty word"), "{err}");
    let err = publish(&client(), &base, "events", &"x".repeat(17))
        .await
        .expect_err("too big");
    assert!(err.contains("messaging.max_message_bytes"), "{err}");
    host.shutdown().await;
}

async fn a_published_message_carries_the_publishers_trace_to_the_subscriber(kind: BrokerKind) {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let messaging = broker(kind);
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("traced.#"));
    let host = dir.start(settings(messaging)).await;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/probe/publish?channel=traced.order",
            host.http_addr()
        ))
        .header("traceparent", &incoming)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"traced-1")))
        .expect("request");
    let reply = client().request(request).await.expect("publish");
    assert_eq!(reply.status(), 200, "{kind:?}");
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled("traced-1") == 1)
            .await,
        "{kind:?}: the message was handled"
    );
    // The subscriber's outbound call (its report to the sink) carries the trace on: same
    // trace id, a span of this host's as the parent (neither the client's nor all zeros).
    let seen = sink
        .traceparent_of("traced-1")
        .expect("the report carried a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{kind:?}: {seen}");
    assert_eq!(
        parts[1], TRACE_ID,
        "{kind:?}: the trace continues through the broker: {seen}"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "{kind:?}: {seen}");
    host.shutdown().await;
}

async fn a_graceful_shutdown_mid_stream_forgets_no_message(kind: BrokerKind) {
    // Slow handlers, four at a time: the shutdown finds deliveries in flight and messages
    // waiting. Whatever it cuts short is delivered again by the next host on the same broker.
    let mut messaging = broker(kind);
    messaging.concurrency = 4;
    const COUNT: usize = 200;
    let sink = Sink::start().await;
    sink.delay_ms(20);
    let dir = AppDir::new(&sink.manifest("jobs"));
    let host = dir.start(settings(messaging.clone())).await;
    let base = format!("http://{}", host.http_addr());
    publish_many(&base, "jobs", "job", COUNT, 4).await;
    assert!(
        sink.wait_for(Duration::from_secs(30), |s| s.handled_count() >= 20)
            .await
    );
    host.shutdown().await;
    let handled_at_shutdown = sink.handled_count();
    assert!(handled_at_shutdown < COUNT, "{kind:?}: the shutdown came mid-stream");

    let host = dir.start(settings(messaging)).await;
    assert!(
        sink.wait_for(Duration::from_secs(60), |s| s.handled_count() == COUNT)
            .await,
        "{kind:?}: {} of {COUNT} handled after the restart ({handled_at_shutdown} before)",
        sink.handled_count()
    );
    host.shutdown().await;
}

/// Every test of this file on one broker, as `<module>::<test>`. A broker with a server of its
/// own is tested in a module `needs_<server>` with its tests ignored unless asked for, so that
/// `cargo xtask test` runs them where the server answers and cargo lists them as ignored
/// elsewhere.
macro_rules! tests_on {
    ($kind:expr $(, #[$attr:meta])?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn ten_thousand_messages_with_random_failures_all_arrive() {
            super::random_failures_lose_nothing($kind).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn poison_message_is_dead_lettered_and_replayed_after_a_fix() {
            super::poison_message_is_dead_lettered_and_replayed_after_a_fix($kind).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn order_is_kept_with_concurrency_one_even_across_retries() {
            super::order_is_kept_with_concurrency_one_even_across_retries($kind).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn a_subscriber_swapped_three_times_mid_stream_loses_nothing() {
            super::a_subscriber_swapped_three_times_mid_stream_loses_nothing($kind).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn a_published_message_carries_the_publishers_trace_to_the_subscriber() {
            super::a_published_message_carries_the_publishers_trace_to_the_subscriber($kind).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn a_graceful_shutdown_mid_stream_forgets_no_message() {
            super::a_graceful_shutdown_mid_stream_forgets_no_message($kind).await;
        }
    };
}

mod embedded {
    use super::*;
    tests_on!(BrokerKind::Embedded);
}

mod needs_rabbitmq {
    use super::*;
    tests_on!(BrokerKind::RabbitMQ, #[ignore = "needs RabbitMQ on 127.0.0.1:5672"]);
}

mod needs_nats {
    use super::*;
    tests_on!(BrokerKind::Nats, #[ignore = "needs NATS on 127.0.0.1:4222"]);
}

/// A delivery count that a broker reports at the top of its range (a broker's own counter,
/// or a store written by another version) is a count to saturate, not one to overflow: the
/// message is still delivered, and still settled, instead of the delivery task panicking and
/// leaving the message unsettled and never handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_count_at_its_maximum_still_delivers_the_message() {
    use mosaic::capability::messaging::embedded::EmbeddedBroker;
    use mosaic::capability::messaging::{Broker, SubscriptionSpec};

    let messaging = broker(BrokerKind::Embedded);
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("payment.*"));
    // Before the host starts: a message in the subscriber's queue whose recorded count is
    // u32::MAX, written through the broker's own interface.
    std::fs::create_dir_all(dir.state_dir()).expect("state dir");
    {
        let broker = EmbeddedBroker::open(&dir.state_dir().join("messages.db"))
            .await
            .expect("open the embedded broker");
        let subscription = SubscriptionSpec {
            subscriber: "subscriber".to_string(),
            patterns: vec!["payment.*".to_string()],
        };
        broker
            .declare(std::slice::from_ref(&subscription))
            .await
            .expect("declare");
        broker.publish("payment.done", b"maxed-1", None).await.expect("publish");
        let mut consumer = broker.consume(&subscription, 1).await.expect("consume");
        let delivery = consumer.next().await.expect("the message");
        delivery.failed_attempt(u32::MAX).await.expect("record the count");
        // Dropped unsettled: it stays in the queue with that count.
    }
    let host = dir.start(settings(messaging)).await;
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled("maxed-1") == 1)
            .await,
        "the message with a saturated count was handled"
    );
    let settled = wait_until(Duration::from_secs(10), || async {
        host.app()
            .capabilities()
            .messaging
            .broker
            .pending("subscriber")
            .await
            .ok()
            == Some(0)
    })
    .await;
    assert!(settled, "the handled message was acked");
    host.shutdown().await;
}

/// Spin subscribes to a `[[trigger.redis]]` channel literally; Mosaic reads `*` and `#` as
/// wildcards. The application still gets Mosaic's matching, and a warning, once per such
/// channel, at start-up and at each deploy of the subscriber; an exact channel gets none.
#[test]
fn a_wildcard_channel_is_warned_about_at_start_and_at_deploy() {
    mosaic_tests::LogCapture::run(|log| async move {
        let sink = Sink::start().await;
        let manifest = sink.manifest("order.*")
            + "[[trigger.redis]]\nchannel = \"payment.completed\"\ncomponent = \"subscriber\"\n";
        let dir = AppDir::new(&manifest);
        let host = dir.start(settings(broker(BrokerKind::Embedded))).await;
        let warning = "subscribes to the channel pattern `order.*`";
        let warnings = |text: &str, what: &str| text.lines().filter(|line| line.contains(what)).count();
        let text = log.text();
        assert_eq!(warnings(&text, warning), 1, "one warning at start-up:\n{text}");
        assert!(
            text.lines()
                .any(|line| line.contains(" WARN ") && line.contains(warning) && line.contains("Spin subscribes")),
            "{text}"
        );
        assert_eq!(
            warnings(&text, "channel pattern `payment.completed`"),
            0,
            "an exact channel is not a pattern:\n{text}"
        );

        // Mosaic's matching is unchanged: `order.created` reaches the `order.*` subscriber.
        let base = format!("http://{}", host.http_addr());
        publish(&client(), &base, "order.created", "wild-1")
            .await
            .expect("publish");
        assert!(
            sink.wait_for(Duration::from_secs(20), |s| s.handled("wild-1") == 1)
                .await
        );

        let report = host
            .pipeline()
            .deploy(deploy_request("subscriber", "subscriber-v2"))
            .await
            .expect("deploy");
        let in_report: Vec<&String> = report.warnings.iter().filter(|w| w.contains(warning)).collect();
        assert_eq!(in_report.len(), 1, "the deploy reports it: {:?}", report.warnings);
        assert_eq!(warnings(&log.text(), warning), 2, "and logs it once more");
        host.shutdown().await;
    });
}
