//! The MQTT trigger, in the format of Spin's MQTT trigger plugin: one MQTT client per
//! `[[trigger.mqtt]]` entry subscribes to its topic (wildcards `+` and `#`) at its QoS on the
//! broker of `[application.trigger.mqtt]`, and each message is handed to the live version's
//! `handle-message` (`spin:mqtt-trigger@3.0.0`) in a fresh instance, with the request deadline
//! and memory cap, one message at a time per entry (in the order the broker sends them).
//!
//! MQTT has no redelivery beyond its QoS: the client acknowledges a message to the broker when
//! it arrives, so a handler that fails, traps or passes its deadline is logged and counted, not
//! retried. A delivery runs on the version that was live when it started, so a swap lets it
//! finish on the old version. A broken connection is connected again with backoff, and the
//! subscription is made again on each connect.

use std::time::{Duration, Instant};

use mosaic_manifest::manifest::{MqttBroker, MqttTrigger};
use rumqttc::{Event, Incoming, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::app::count;
use crate::capability::bindings::mqtt_handler::spin::mqtt_trigger::spin_mqtt_types::Metadata;
use crate::capability::http_outbound::ChainPosition;
use crate::capability::mqtt::client;
use crate::instance::DeadlineExceeded;
use crate::observe::{SpanKind, TraceContext};
use crate::stop::stopped;
use crate::trigger::Dispatcher;

/// Longest wait between two attempts to reach a broker that is down.
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Messages received and not yet handled, per entry, before the client stops reading.
const BACKLOG: usize = 256;

/// Starts one subscriber per `[[trigger.mqtt]]` entry. Each stops when `stop` turns true and
/// lets the delivery in progress finish (up to the drain deadline).
pub fn start(trigger: &Dispatcher, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let app = trigger.app();
    let Some(broker) = app.manifest.mqtt_broker.clone() else {
        return Vec::new();
    };
    app.manifest
        .mqtt_triggers
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, entry)| tokio::spawn(run_entry(trigger.clone(), broker.clone(), entry, index, stop.clone())))
        .collect()
}

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

async fn run_entry(
    trigger: Dispatcher,
    broker: MqttBroker,
    entry: MqttTrigger,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let app = trigger.app().clone();
    let component = entry.component.clone();
    // A client id of its own per entry and host: a broker drops the older of two sessions
    // with one id.
    let client_id = format!("mosaic-{}-{index}-{:08x}", component, rand::random::<u32>());
    let key = client::BrokerKey {
        address: format!("{}?client_id={client_id}", broker.address.trim_end_matches('/')),
        username: broker.username.clone(),
        password: broker.password.clone(),
        keep_alive: Duration::from_secs(broker.keep_alive_interval_secs.max(5)),
    };
    let shown = client::redact(&broker.address);
    let options = match client::options(&key) {
        Ok(options) => options,
        Err(why) => {
            tracing::error!(component = %component, broker = %shown, %why, "cannot subscribe the MQTT trigger");
            return;
        }
    };
    let (mqtt, mut event_loop) = client::event_loop(options, 16);
    let qos = qos_of(entry.qos);
    let (deliveries, mut backlog) = mpsc::channel::<(String, Vec<u8>)>(BACKLOG);
    // The handler side: one delivery at a time, in arrival order.
    let worker = tokio::spawn({
        let trigger = trigger.clone();
        let component = component.clone();
        async move {
            while let Some((topic, payload)) = backlog.recv().await {
                let trace = TraceContext::continue_or_start_from(None);
                let span = tracing::info_span!("mqtt delivery", component = %component, topic = %topic, version = tracing::field::Empty, trace_id = %trace.trace_id);
                deliver(&trigger, &component, topic, payload, trace)
                    .instrument(span)
                    .await;
            }
        }
    });
    tracing::info!(component = %component, topic = %entry.topic, qos = entry.qos, broker = %shown, "MQTT trigger subscribing");
    let mut reconnect_wait = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            event = event_loop.poll() => event,
            _ = stopped(&mut stop) => break,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                reconnect_wait = Duration::from_millis(100);
                // A clean session forgets the subscription: make it on every connect.
                if let Err(err) = mqtt.try_subscribe(entry.topic.clone(), qos) {
                    tracing::warn!(component = %component, error = %err, "cannot subscribe to the MQTT topic");
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                tracing::info!(component = %component, topic = %entry.topic, granted = ?ack.return_codes, "MQTT trigger subscribed");
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let topic = publish.topic.clone();
                let payload = publish.payload.to_vec();
                tokio::select! {
                    sent = deliveries.send((topic, payload)) => if sent.is_err() { break },
                    _ = stopped(&mut stop) => break,
                }
            }
            Ok(_) => {}
            Err(err) => {
                app.metrics.record_backend_error("mqtt", "mqtt");
                let why = client::scrub(&err.to_string(), &broker.password);
                tracing::warn!(component = %component, broker = %shown, error = %why, retry_in = ?reconnect_wait, "the MQTT trigger's connection failed; connecting again");
                tokio::select! {
                    _ = tokio::time::sleep(reconnect_wait) => {}
                    _ = stopped(&mut stop) => break,
                }
                reconnect_wait = (reconnect_wait * 2).min(RECONNECT_MAX);
            }
        }
    }
    // Shutting down: leave the broker, let the delivery in progress finish.
    let _ = mqtt.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while let Ok(event) = event_loop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    drop(deliveries);
    let drain = app.settings.limits.drain_timeout();
    let mut worker = worker;
    if tokio::time::timeout(drain, &mut worker).await.is_err() {
        tracing::warn!(component = %component, ?drain, "an MQTT delivery was still running at the drain deadline");
        worker.abort();
    }
}

/// One message: a fresh instance of the live version handles it; the outcome is logged.
async fn deliver(trigger: &Dispatcher, component: &str, topic: String, payload: Vec<u8>, trace: TraceContext) {
    let app = trigger.app();
    let Some(slot) = app.slot(component) else {
        tracing::error!("component `{component}` is not loaded; the MQTT message is dropped");
        return;
    };
    count(&slot.stats.requests);
    let (picked, _) = app.pick(&slot, None, |_| None);
    let deployment = picked.deployment.clone();
    let version = deployment.short_digest().to_string();
    tracing::Span::current().record("version", version.as_str());
    // An MQTT message carries no trace context: each delivery is the root of its own trace.
    let mut consumer_span = app.metrics.spans().begin(&trace, None, SpanKind::Consumer, "");
    consumer_span.describe_delivery("mqtt", &topic, payload.len(), component);
    consumer_span.set_str("mosaic.component.version", &version);
    let timeout = app.settings.limits.request_timeout();
    let started = Instant::now();
    let outcome = async {
        let Some(pre) = deployment.mqtt.clone() else {
            return Err(format!("component `{component}` exports no MQTT handler"));
        };
        let _in_flight = deployment.enter();
        let mut store = app
            .instances
            .new_store(
                &slot.spec,
                trigger.chained(),
                ChainPosition::start(app.set_generation()),
                timeout,
            )
            .map_err(|err| format!("component `{component}` could not be instantiated: {err:#}"))?;
        store
            .data_mut()
            .set_trace(Some(trace.clone()), tracing::Span::current());
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            store
                .run_concurrent(async move |accessor| {
                    instance
                        .call_handle_message(accessor, payload, Metadata { topic })
                        .await
                })
                .await?
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("component `{component}` returned an error ({error:?})")),
            Ok(Err(err)) if err.downcast_ref::<DeadlineExceeded>().is_some() => {
                Err(format!("component `{component}` exceeded its deadline of {timeout:?}"))
            }
            Ok(Err(err)) => Err(format!("component `{component}` failed: {err:#}")),
            Err(_) => Err(format!("component `{component}` exceeded its deadline of {timeout:?}")),
        }
    }
    .await;
    app.metrics
        .record_request(component, &version, started.elapsed(), outcome.is_err());
    picked.record(outcome.is_err());
    match consumer_span.end_with(outcome, Clone::clone) {
        Ok(()) => tracing::debug!(%version, elapsed = ?started.elapsed(), "MQTT message handled"),
        Err(reason) => {
            count(&slot.stats.errors);
            tracing::error!(%version, %reason, "MQTT message handler failed; MQTT does not redeliver it");
        }
    }
}
