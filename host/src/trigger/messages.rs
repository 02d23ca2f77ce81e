//! How messages reach a component: one runner per `[[trigger.redis]]` subscription consumes its
//! durable queue from the broker and calls the live version's `fermyon:spin/inbound-redis`
//! handler, each delivery in a fresh instance.
//!
//! `Ok` acks. `Err`, a trap or the deadline is a failed attempt: the message is retried in
//! place after an exponential backoff (so with `concurrency = 1` the publish order holds even
//! across retries), and after `max_deliver` attempts it goes to the dead-letter store. A
//! delivery runs on the version that was live when it started, like a request, so a swap
//! lets deliveries in flight finish on the old version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::app::{count, ComponentSpec, Deployment};
use crate::capability::http_outbound::ChainPosition;
use crate::capability::messaging::settings::DeliveryPolicy;
use crate::capability::messaging::{now_unix_ms, Delivery, SubscriptionSpec};
use crate::instance::DeadlineExceeded;
use crate::observe::{MessageEvent, OpenSpan, SpanKind, TraceContext};
use crate::stop::stopped;
use crate::trigger::Dispatcher;

/// Longest wait between two attempts to reach a broker that is down.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Starts one runner per subscription of the manifest. Each stops taking deliveries when
/// `stop` turns true and lets the ones it started finish (up to the drain deadline).
pub fn start(trigger: &Dispatcher, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let app = trigger.app();
    app.manifest
        .subscriptions()
        .into_iter()
        .map(|subscription| {
            let policy = app.settings.messaging.policy_of(&subscription.subscriber);
            tokio::spawn(run_subscription(trigger.clone(), subscription, policy, stop.clone()))
        })
        .collect()
}

async fn run_subscription(
    trigger: Dispatcher,
    subscription: SubscriptionSpec,
    policy: DeliveryPolicy,
    mut stop: watch::Receiver<bool>,
) {
    let app = trigger.app().clone();
    let broker = app.capabilities().messaging.broker.clone();
    let subscriber = subscription.subscriber.clone();
    let permits = Arc::new(Semaphore::new(policy.concurrency as usize));
    let mut reconnect_wait = Duration::from_millis(100);
    tracing::info!(component = %subscriber, channels = ?subscription.patterns, broker = broker.kind(), concurrency = policy.concurrency, "subscribed");
    'consume: while !*stop.borrow() {
        let mut consumer = match broker.consume(&subscription, policy.concurrency).await {
            Ok(consumer) => consumer,
            Err(err) => {
                app.metrics.record_backend_error("messaging", broker.kind());
                tracing::warn!(component = %subscriber, error = %err, retry_in = ?reconnect_wait, "cannot consume the subscription; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(reconnect_wait) => {}
                    _ = stopped(&mut stop) => break 'consume,
                }
                reconnect_wait = (reconnect_wait * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        reconnect_wait = Duration::from_millis(100);
        loop {
            // A permit first: with concurrency 1 the next message waits for the previous one.
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'consume,
                },
                _ = stopped(&mut stop) => break 'consume,
            };
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                _ = stopped(&mut stop) => break 'consume,
            };
            match delivery {
                Ok(delivery) => {
                    let trigger = trigger.clone();
                    let (subscriber, policy, stop) = (subscriber.clone(), policy, stop.clone());
                    let publisher_span = delivery.traceparent.as_deref().and_then(TraceContext::parse);
                    let trace = TraceContext::continue_from(publisher_span.as_ref());
                    let span = tracing::info_span!("delivery", component = %subscriber, topic = %delivery.topic, version = tracing::field::Empty, trace_id = %trace.trace_id);
                    let consumer_span = app.metrics.spans().begin(
                        &trace,
                        publisher_span.as_ref().map(|parent| parent.span_id.as_str()),
                        SpanKind::Consumer,
                        "",
                    );
                    let broker_kind = broker.kind();
                    tokio::spawn(
                        async move {
                            let mut consumer_span = consumer_span;
                            consumer_span.describe_delivery(
                                broker_kind,
                                &delivery.topic,
                                delivery.payload.len(),
                                &subscriber,
                            );
                            consumer_span.set_str("messaging.consumer.group.name", &subscriber);
                            handle(&trigger, &subscriber, policy, delivery, trace, &mut consumer_span, stop).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(err) => {
                    app.metrics.record_backend_error("messaging", broker.kind());
                    tracing::warn!(component = %subscriber, error = %err, "the subscription's consumer broke; consuming again");
                    continue 'consume;
                }
            }
        }
    }
    // Let the deliveries in progress finish; what they do not settle is redelivered later.
    let drain = app.settings.limits.drain_timeout();
    let all = policy.concurrency;
    if tokio::time::timeout(drain, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(component = %subscriber, ?drain, "deliveries still running at the drain deadline; the broker redelivers them");
    }
}

/// Delivers one message until it is handled or dead-lettered.
async fn handle(
    trigger: &Dispatcher,
    subscriber: &str,
    policy: DeliveryPolicy,
    delivery: Delivery,
    trace: TraceContext,
    span: &mut OpenSpan,
    mut stop: watch::Receiver<bool>,
) {
    let app = trigger.app();
    let metrics = &app.metrics;
    let topic = delivery.topic.clone();
    let mut attempts = delivery.attempts;
    if let Some(published) = delivery.published_at_ms {
        metrics.record_delivery_lag(subscriber, &topic, now_unix_ms().saturating_sub(published));
    }
    loop {
        // The count comes from the broker and may stand at its maximum already.
        attempts = attempts.saturating_add(1);
        metrics.record_message(subscriber, &topic, MessageEvent::Delivered);
        if attempts > 1 {
            metrics.record_message(subscriber, &topic, MessageEvent::Redelivered);
        }
        let started = Instant::now();
        let outcome = deliver_once(trigger, subscriber, &delivery.payload, &trace).await;
        match outcome {
            Ok(version) => {
                span.set("mosaic.delivery.attempts", i64::from(attempts));
                span.set_str("mosaic.component.version", &version);
                span.clear_failure();
                tracing::debug!(%version, attempts, elapsed = ?started.elapsed(), "message handled");
                metrics.record_message(subscriber, &topic, MessageEvent::Acked);
                if let Err(err) = delivery.ack().await {
                    // At-least-once: the broker will deliver it again.
                    tracing::warn!(error = %err, "handled, but the ack did not reach the broker; the message may be delivered again");
                }
                return;
            }
            Err(reason) => {
                metrics.record_message(subscriber, &topic, MessageEvent::Nacked);
                span.set("mosaic.delivery.attempts", i64::from(attempts));
                span.fail(&reason);
                if attempts >= policy.max_deliver {
                    span.set("mosaic.delivery.dead_lettered", true);
                    tracing::error!(attempts, %reason, "message dead-lettered after its last attempt (see `mosaic dlq list`)");
                    metrics.record_message(subscriber, &topic, MessageEvent::DeadLettered);
                    if let Err(err) = delivery.dead_letter(attempts, &reason).await {
                        tracing::error!(error = %err, "cannot move the message to the dead-letter store; the broker will deliver it again");
                    }
                    return;
                }
                let wait = policy.backoff(attempts);
                tracing::warn!(attempts, max_deliver = policy.max_deliver, %reason, retry_in = ?wait, "message handler failed; retrying");
                if let Err(err) = delivery.failed_attempt(attempts).await {
                    tracing::warn!(error = %err, "cannot record the failed attempt in the broker");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Shutting down: leave the message unsettled; the broker delivers it again.
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

/// One attempt: a fresh instance of the live version handles the payload. Returns the version
/// that handled it, or why it failed.
async fn deliver_once(
    trigger: &Dispatcher,
    subscriber: &str,
    payload: &[u8],
    trace: &TraceContext,
) -> Result<String, String> {
    let app = trigger.app();
    let Some(slot) = app.slot(subscriber) else {
        return Err(format!("component `{subscriber}` is not loaded"));
    };
    count(&slot.stats.requests);
    // A delivery has no header: during a canary it goes to the canary for its share, at random.
    let (picked, _) = app.pick(&slot, None, |_| None);
    let deployment = picked.deployment.clone();
    let version = deployment.short_digest().to_string();
    tracing::Span::current().record("version", version.as_str());
    let timeout = app.settings.limits.request_timeout();
    let started = Instant::now();
    let outcome = call_handler(trigger, &slot.spec, deployment, payload, trace, timeout).await;
    app.metrics
        .record_request(subscriber, &version, started.elapsed(), outcome.is_err());
    if outcome.is_err() {
        count(&slot.stats.errors);
    }
    picked.record(outcome.is_err());
    outcome.map(|()| version)
}

async fn call_handler(
    trigger: &Dispatcher,
    spec: &ComponentSpec,
    deployment: Arc<Deployment>,
    payload: &[u8],
    trace: &TraceContext,
    timeout: Duration,
) -> Result<(), String> {
    let name = &spec.name;
    let Some(pre) = deployment.subscriber.clone() else {
        return Err(format!(
            "component `{name}` exports no message handler (deploy a spin-sdk #[redis_subscriber] or #[redis_component] build)"
        ));
    };
    let _in_flight = deployment.enter();
    let mut store = trigger
        .app()
        .instances
        .new_store(
            spec,
            trigger.chained(),
            ChainPosition::start(trigger.app().set_generation()),
            timeout,
        )
        .map_err(|err| format!("component `{name}` could not be instantiated: {err:#}"))?;
    // The handler's outbound calls and publishes carry on the publisher's trace.
    store
        .data_mut()
        .set_trace(Some(trace.clone()), tracing::Span::current());
    let run = pre.deliver(&mut store, payload.to_vec());
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(format!("component `{name}` returned an error ({error})")),
        Ok(Err(err)) => Err(describe_trap(name, err, timeout)),
        Err(_) => Err(format!("component `{name}` exceeded its deadline of {timeout:?}")),
    }
}

fn describe_trap(name: &str, err: wasmtime::Error, timeout: Duration) -> String {
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return format!("component `{name}` exceeded its deadline of {timeout:?}");
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("component `{name}` trapped: {trap}: {err:#}"),
        None => format!("component `{name}` failed: {err:#}"),
    }
}
