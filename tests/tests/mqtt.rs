//! MQTT against the real Mosquitto broker (127.0.0.1:1883, anonymous): outbound publishes of
//! `fermyon:spin/mqtt@2.0.0` (the spin-sdk 5.2 probe) and `spin:mqtt/mqtt@3.0.0` (spin-sdk 7's
//! spin7-caps) at each QoS, received by a subscriber in the test; the grant check; a broker
//! that does not answer. Each test uses topics of its own.

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
                let reply = send(&client, "POST", &url, format!("hello {fixture} {qos}")).await.unwrap();
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
                reply.body.contains("ConnectionFailed(\"address mqtt://10.1.2.3:1883 is not permitted\")"),
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
}
