//! `kill -9` of a `mosaic up` process in the middle of a stream of 5,000 published messages,
//! then a restart: every message whose publish was acknowledged to the guest is handled at
//! least once (embedded broker and RabbitMQ).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mosaic_tests::sink::Sink;
use mosaic_tests::{client, require_service, send, unique, AppDir, MosaicProcess};

const COUNT: usize = 5_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

async fn killed_mid_stream_loses_nothing(broker_settings: &str, subscriber_fixture: &str) {
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest_with("jobs", subscriber_fixture));
    std::fs::write(
        dir.path.join("mosaic.toml"),
        format!(
            "[messaging]\n{broker_settings}namespace = \"{}\"\nconcurrency = 4\nretry_initial_ms = 5\n",
            unique("crash")
        ),
    )
    .expect("mosaic.toml");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let mut host = MosaicProcess::start(&dir.path, &["up", "--listen", &listen]);

    // Four publishers; a publish that fails (the host is down) is tried again until acknowledged.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut publishers = Vec::new();
    for first in 0..4 {
        let (base, acknowledged) = (base.clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            let http = client();
            for n in (first..COUNT).step_by(4) {
                let payload = format!("job-{n}");
                loop {
                    let url = format!("{base}/probe/publish?channel=jobs");
                    match send(&http, "POST", &url, payload.clone()).await {
                        Ok(reply) if reply.status == 200 => break,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                acknowledged.lock().unwrap().insert(payload);
            }
        }));
    }
    let published = |acknowledged: &Arc<Mutex<BTreeSet<String>>>| acknowledged.lock().unwrap().len();
    while published(&acknowledged) < COUNT * 2 / 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill_hard();
    let at_kill = published(&acknowledged);
    let handled_at_kill = sink.handled_count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _restarted = tokio::task::spawn_blocking({
        let path = dir.path.clone();
        move || MosaicProcess::start(&path, &["up", "--listen", &listen])
    })
    .await
    .expect("restart");
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    assert!(at_kill < COUNT && handled_at_kill < COUNT, "the kill came mid-stream");
    let all = sink
        .wait_for(Duration::from_secs(180), |sink| sink.handled_count() >= COUNT)
        .await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), COUNT);
    let lost: Vec<&String> = acknowledged.iter().filter(|p| sink.handled(p) == 0).take(10).collect();
    assert!(
        all && lost.is_empty(),
        "lost after the kill: {lost:?} ({} handled)",
        sink.handled_count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_embedded() {
    killed_mid_stream_loses_nothing("", "subscriber").await;
}

/// The same with a spin-sdk 7 subscriber (`spin:redis/inbound-redis@3.0.0`, WASI 0.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_nothing_with_a_wasi_0_3_subscriber() {
    killed_mid_stream_loses_nothing("", "subscriber7").await;
}

mod needs_rabbitmq {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs RabbitMQ on 127.0.0.1:5672"]
    async fn kill_9_mid_stream_then_restart_loses_nothing_rabbitmq() {
        require_service("RabbitMQ", "127.0.0.1:5672");
        killed_mid_stream_loses_nothing(
            "broker = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n",
            "subscriber",
        )
        .await;
    }
}
