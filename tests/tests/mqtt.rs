//! MQTT against the real Mosquitto broker (127.0.0.1:1883, anonymous): outbound publishes of
//! `fermyon:spin/mqtt@2.0.0` (the spin-sdk 5.2 probe) and `spin:mqtt/mqtt@3.0.0` (spin-sdk 7's
//! spin7-caps) at each QoS, received by a subscriber in the test; the grant check; a broker
//! that does not answer; the MQTT trigger (Spin's MQTT trigger plugin format) delivering
//! messages of wildcard topics to the mqtt-echo fixture, which publishes each back on
//! `echo/TOPIC`. Each test uses topics of its own.

use std::time::Duration;

use mosaic::settings::Settings;
use mosaic_tests::*;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const MOSQUITTO: &str = "127.0.0.1:1883";

fn manifest() -> String {
    r#"
spin_manifest_version = 2
[application]
name = "mqtt-out"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/caps/..."
component = "caps"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1884"]
[component.caps]
source = "{spin7-caps}"
allowed_outbound_hosts = ["mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1884"]
"#
    .to_string()
}

/// A subscriber in the test process: the messages of `filter`, as (topic, payload).
async fn subscribe(filter: &str) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(unique("test-sub"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut event_loop) = AsyncClient::new(options, 64);
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    client.subscribe(filter, QoS::ExactlyOnce).await.unwrap();
    tokio::spawn(async move {
        let mut subscribed = Some(subscribed_tx);
        while let Ok(event) = event_loop.poll().await {
            match event {
                Event::Incoming(Incoming::SubAck(_)) => {
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Incoming::Publish(publish)) => {
                    let _ = sender.send((publish.topic.clone(), publish.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed_rx)
        .await
        .expect("the broker acknowledges the subscription")
        .unwrap();
    (client, receiver)
}

async fn next(receiver: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) -> (String, String) {
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("a message within 5 s")
        .expect("the subscriber runs");
    (topic, String::from_utf8(payload).unwrap())
}

mod needs_mosquitto {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Mosquitto on 127.0.0.1:1883"]
    async fn publishes_at_each_qos_from_spin_sdk_5_and_7() {
        require_service("Mosquitto", MOSQUITTO);
        let dir = AppDir::new(&manifest());
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let prefix = unique("mosaic-out");
        let (_subscriber, mut received) = subscribe(&format!("{prefix}/#")).await;
        for (fixture, path) in [("probe", "probe/mqtt"), ("caps", "caps/mqtt/publish")] {
            for qos in 0..=2 {
                let topic = format!("{prefix}/{fixture}/{qos}");
                let url = format!(
                    "{base}/{path}?addr=mqtt://127.0.0.1:1883&client={}&topic={topic}&qos={qos}",
                    unique("c")
                );
                let reply = send(&client, "POST", &url, format!("hello {fixture} {qos}"))
                    .await
                    .unwrap();
                assert_eq!(reply.body, "published", "{fixture} qos {qos}");
                assert_eq!(next(&mut received).await, (topic, format!("hello {fixture} {qos}")));
            }
        }
        // Credentials are passed (an anonymous broker accepts them), and publishes keep going on
        // the shared connection.
        let topic = format!("{prefix}/creds");
        let url = format!(
            "{base}/probe/mqtt?addr=mqtt://127.0.0.1:1883&client={}&topic={topic}&qos=1&user=alice&pass=s3cret",
            unique("c")
        );
        for n in 0..3 {
            let reply = send(&client, "POST", &url, format!("n{n}")).await.unwrap();
            assert_eq!(reply.body, "published");
            assert_eq!(next(&mut received).await, (topic.clone(), format!("n{n}")));
        }
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Mosquitto on 127.0.0.1:1883"]
    async fn refusals_and_an_unreachable_broker_are_errors() {
        require_service("Mosquitto", MOSQUITTO);
        let dir = AppDir::new(&manifest());
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        // Not granted: Spin's error.
        for path in ["probe/mqtt", "caps/mqtt/publish"] {
            let url = format!("{base}/{path}?addr=mqtt://10.1.2.3:1883&client=x&topic=t&qos=1");
            let reply = send(&client, "POST", &url, "x").await.unwrap();
            assert!(
                reply
                    .body
                    .contains("ConnectionFailed(\"address mqtt://10.1.2.3:1883 is not permitted\")"),
                "{path}: {}",
                reply.body
            );
        }
        // Nothing listens on 1884 (granted): an error soon, never a hang; no password in it.
        for path in ["probe/mqtt", "caps/mqtt/publish"] {
            let url = format!("{base}/{path}?addr=mqtt://127.0.0.1:1884&client=x&topic=t&qos=1&pass=hunter2");
            let started = std::time::Instant::now();
            let reply = send(&client, "POST", &url, "x").await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
            assert!(reply.body.contains("ConnectionFailed("), "{path}: {}", reply.body);
            assert!(!reply.body.contains("hunter2"), "{}", reply.body);
        }
        // An address without a client id is Spin's invalid-address.
        let url = format!("{base}/caps/mqtt?addr=mqtt://127.0.0.1:1883");
        let reply = send(&client, "GET", &url, "").await.unwrap();
        assert!(reply.body.contains("InvalidAddress"), "{}", reply.body);
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Mosquitto on 127.0.0.1:1883"]
    async fn the_trigger_delivers_messages_of_wildcard_topics() {
        require_service("Mosquitto", MOSQUITTO);
        let prefix = unique("mosaic-in");
        let dir = AppDir::new(&format!(
            r#"
spin_manifest_version = 2
[application]
name = "mqtt-in"
[application.trigger.mqtt]
address = "mqtt://127.0.0.1:1883"
username = ""
password = ""
keep_alive_interval = "30"
[[trigger.mqtt]]
id = "plus"
component = "echo"
topic = "{prefix}/sensors/+/temp"
qos = "1"
[[trigger.mqtt]]
id = "hash"
component = "echo"
topic = "{prefix}/events/#"
qos = "0"
[component.echo]
source = "{{mqtt-echo}}"
allowed_outbound_hosts = ["mqtt://127.0.0.1:1883"]
"#
        ));
        let (_subscriber, mut echoes) = subscribe(&format!("echo/{prefix}/#")).await;
        let receiver = otlp::OtlpReceiver::start(otlp::Transport::HttpProtobuf).await;
        let mut settings = Settings::default();
        settings.telemetry.endpoint = Some(receiver.endpoint());
        settings.telemetry.schedule_delay_ms = Some(50);
        let host = dir.start(settings).await;
        let publisher = {
            let mut options = MqttOptions::new(unique("test-pub"), "127.0.0.1", 1883);
            options.set_keep_alive(Duration::from_secs(10));
            let (client, mut event_loop) = AsyncClient::new(options, 64);
            tokio::spawn(async move { while event_loop.poll().await.is_ok() {} });
            client
        };
        // The trigger subscribes once it connected: publish until the first echo comes back.
        let first = format!("{prefix}/sensors/kitchen/temp");
        let mut got = None;
        for _ in 0..50 {
            publisher
                .publish(&first, QoS::AtLeastOnce, false, b"21.5".to_vec())
                .await
                .unwrap();
            if let Ok(Some(echo)) = tokio::time::timeout(Duration::from_millis(200), echoes.recv()).await {
                got = Some(echo);
                break;
            }
        }
        let (topic, payload) = got.expect("the trigger delivered a message");
        assert_eq!(
            (topic.as_str(), payload.as_slice()),
            (format!("echo/{first}").as_str(), &b"21.5"[..])
        );
        // Drain any echoes of the retries.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while echoes.try_recv().is_ok() {}

        // A trap and an error are logged; the next messages are still handled. Not matching
        // topics are not delivered.
        for (topic, payload) in [
            (format!("{prefix}/events/a/b"), "trap"),
            (format!("{prefix}/events/a/b"), "fail"),
            (format!("{prefix}/sensors/kitchen/humidity"), "not for us"),
            (format!("{prefix}/events/door"), "open"),
            (format!("{prefix}/sensors/hall/temp"), "19"),
        ] {
            publisher
                .publish(&topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
                .await
                .unwrap();
        }
        let mut seen = vec![next(&mut echoes).await, next(&mut echoes).await];
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (format!("echo/{prefix}/events/door"), "open".to_string()),
                (format!("echo/{prefix}/sensors/hall/temp"), "19".to_string()),
            ]
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), echoes.recv())
                .await
                .is_err(),
            "only the matching topics are delivered"
        );
        // Each delivery is a consumer span of its own trace; the trap's is an error.
        let deliveries = |spans: &[otlp::ReceivedSpan], topic: &str| -> Vec<otlp::ReceivedSpan> {
            spans
                .iter()
                .filter(|span| {
                    span.kind == otlp::KIND_CONSUMER
                        && span.attribute("messaging.system") == Some("mqtt")
                        && span.attribute("messaging.destination.name") == Some(topic)
                })
                .cloned()
                .collect()
        };
        let hall = format!("{prefix}/sensors/hall/temp");
        let events = format!("{prefix}/events/a/b");
        let spans = receiver
            .wait_for(Duration::from_secs(10), |spans| {
                !deliveries(spans, &hall).is_empty() && deliveries(spans, &events).len() >= 2
            })
            .await;
        let handled = &deliveries(&spans, &hall)[0];
        assert_eq!(handled.name, format!("process {hall}"));
        assert_eq!(handled.attribute("mosaic.component"), Some("echo"));
        assert_eq!(handled.status_code, 0, "{handled:?}");
        assert!(handled.parent_span_id.is_empty(), "an MQTT message starts its trace");
        let failed = deliveries(&spans, &events);
        assert!(
            failed.iter().all(|span| span.status_code == 2),
            "the trap's and the error's deliveries are errors: {failed:#?}"
        );
        host.shutdown().await;
    }
}
