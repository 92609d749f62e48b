//! The JetStream store against a real `nats-server`: acks remove, a retry
//! waits its delay with its attempts counted, a release and an unsettled
//! event come back, the per-function bound refuses, dead letters paginate.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{NatsServer, nats_server_binary};
use porchlight_gateway::budget::{MemoryBudget, Purpose};
use porchlight_gateway::dead_letters::{DeadLetter, PageRequest};
use porchlight_gateway::gateway::TriggerKind;
use porchlight_gateway::queue::nats::{NatsQueue, NatsSettings};
use porchlight_gateway::queue::{Consumer, Delivery, EventQueue, QueueError, StoredEvent, now_ms};

async fn queue(nats: &NatsServer, depth: usize) -> NatsQueue {
    NatsQueue::connect(NatsSettings {
        url: nats.url.clone(),
        depth,
        ack_wait: Duration::from_secs(1),
        dead_letter_capacity: 100,
        dead_letter_bytes: 1 << 20,
    })
    .await
    .expect("connected")
}

fn event(function: &str, i: usize) -> StoredEvent {
    StoredEvent::new(
        format!("r{i}"),
        function,
        TriggerKind::Event,
        Bytes::from(format!("{{\"n\":{i}}}")),
    )
}

async fn publish(q: &NatsQueue, e: StoredEvent) -> Result<(), QueueError> {
    let held = MemoryBudget::new(1 << 20)
        .try_reserve(e.payload.len(), Purpose::Async)
        .expect("room");
    q.publish(e, held).await
}

async fn take(c: &mut Box<dyn Consumer>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next(1))
        .await
        .expect("an event within 10 s")
        .expect("no store error")
        .expect("queue open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_retries_releases_and_redeliveries() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "store");
    let q = queue(&nats, 100).await;
    for i in 0..3 {
        publish(&q, event("f", i)).await.expect("stored");
    }
    // A publish repeated with the same request id is stored once.
    publish(&q, event("f", 2)).await.expect("deduplicated");
    let mut c = q.consumer("f").await.expect("consumer");

    let d = take(&mut c).await;
    assert_eq!((d.event.request_id.as_str(), d.delivered), ("r0", 1));
    d.settle.ack().await.expect("acked");

    // A retry: stored again with its count, not handed out before its time.
    let d = take(&mut c).await;
    assert_eq!(d.event.request_id, "r1");
    let mut again = d.event.clone();
    again.attempts = 1;
    d.settle
        .retry(again, Duration::from_millis(1500))
        .await
        .expect("retry stored");

    // Not settled at all (its gateway died): handed out again after the ack wait.
    let d = take(&mut c).await;
    assert_eq!((d.event.request_id.as_str(), d.delivered), ("r2", 1));
    drop(d);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = take(&mut c).await;
        seen.push((d.event.request_id.clone(), d.event.attempts));
        if d.event.request_id == "r1" {
            // Handed out once per early fetch (given back with the rest of
            // its delay) and once now.
            let delivered = d.delivered;
            assert!(now_ms() >= d.event.not_before_ms, "not before its delay");
            // Given back uncounted (a throttle): comes back, delivered again.
            d.settle
                .release(Duration::from_millis(200))
                .await
                .expect("released");
            let back = take(&mut c).await;
            assert_eq!(back.event.request_id, "r1");
            assert_eq!(back.event.attempts, 1);
            assert_eq!(back.delivered, delivered + 1);
            back.settle.ack().await.expect("acked");
        } else {
            assert_eq!(d.delivered, 2, "the unsettled event is handed out again");
            d.settle.ack().await.expect("acked");
        }
    }
    seen.sort();
    assert_eq!(seen, [("r1".to_string(), 1), ("r2".to_string(), 0)]);
    // Nothing else is left.
    let rest = tokio::time::timeout(Duration::from_secs(3), c.next(1)).await;
    assert!(rest.is_err(), "no event left: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_function_is_refused_and_dead_letters_paginate() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "bounds");
    let q = queue(&nats, 2).await;
    publish(&q, event("full", 0)).await.expect("stored");
    publish(&q, event("full", 1)).await.expect("stored");
    assert_eq!(publish(&q, event("full", 2)).await, Err(QueueError::Full));
    assert_eq!(
        publish(&q, event("other", 3)).await,
        Ok(()),
        "the bound is per function"
    );

    let mut c = q.consumer("other").await.expect("consumer");
    let d = take(&mut c).await;
    let letter = |e: &StoredEvent| DeadLetter {
        function: e.function.clone(),
        request_id: e.request_id.clone(),
        trigger: e.trigger.as_str(),
        event: e.payload.clone(),
        error: Bytes::from_static(br#"{"errorMessage":"boom"}"#),
        attempts: 3,
        time: String::new(),
    };
    d.settle.dead_letter(letter(&d.event)).await.expect("moved");
    let mut c = q.consumer("full").await.expect("consumer");
    for _ in 0..2 {
        let d = take(&mut c).await;
        d.settle.dead_letter(letter(&d.event)).await.expect("moved");
    }
    let mut request = PageRequest {
        function: None,
        after: None,
        max_items: 2,
        max_bytes: usize::MAX,
    };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let page = q.dead_letters(&request).await.expect("page");
        assert_eq!(page.total, 3);
        assert!(page.dead_letters.len() <= 2);
        seen.extend(page.dead_letters.iter().map(|l| l.request_id.clone()));
        match page.next_marker {
            Some(m) => request.after = Some(m.parse().expect("number")),
            None => break,
        }
    }
    assert_eq!(seen, ["r3", "r0", "r1"]);
    let only = q
        .dead_letters(&PageRequest {
            function: Some("full".into()),
            after: None,
            max_items: 10,
            max_bytes: usize::MAX,
        })
        .await
        .expect("page");
    let ids: Vec<_> = only
        .dead_letters
        .iter()
        .map(|l| l.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r0", "r1"]);
    assert_eq!(
        only.dead_letters[0].error,
        Bytes::from_static(br#"{"errorMessage":"boom"}"#)
    );
    // Dead-lettered events are gone from the queue.
    let rest = tokio::time::timeout(Duration::from_secs(3), c.next(1)).await;
    assert!(rest.is_err(), "no event left: {rest:?}");
}
