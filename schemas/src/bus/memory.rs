//! The in-process bus of standalone mode. It keeps RabbitMQ's contract for
//! what cardfleet uses: exchanges (direct, topic, fanout) routing to queues,
//! manual acks with a per-consumer prefetch, redelivery (flagged) of
//! everything a consumer held when it nacks or goes away, a delivery limit
//! after which a message is dead-lettered with the broker's death headers,
//! unroutable mandatory publishes refused, and exclusive subscriptions for
//! fanout broadcasts. Messages live in memory: across a process restart,
//! standalone mode re-dispatches unfinished jobs from the store's outbox.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{BusError, Props};

/// Exchange types of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Topic,
    Fanout,
}

#[derive(Debug, Clone)]
struct Message {
    data: Arc<[u8]>,
    props: Props,
    redelivered: bool,
    /// Times the message went back to its queue unacknowledged.
    returns: u32,
}

#[derive(Debug, Default)]
struct Queue {
    ready: VecDeque<Message>,
    /// Delivered and not yet settled: tag → (consumer, message).
    unacked: HashMap<u64, (u64, Message)>,
    held: HashMap<u64, usize>,
    delivery_limit: Option<u32>,
    dead_letter_exchange: Option<String>,
    /// Deleted when its only consumer goes (exclusive subscriptions).
    auto_delete: bool,
}

#[derive(Debug, Default)]
struct State {
    exchanges: HashMap<String, Kind>,
    /// (exchange, binding key, queue)
    bindings: Vec<(String, String, String)>,
    queues: HashMap<String, Queue>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    /// Woken whenever a queue gains a message or a consumer frees prefetch.
    changed: Notify,
}

/// A handle to the bus; clones share it.
#[derive(Debug, Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

fn poisoned() -> BusError {
    BusError::Closed("the in-process bus failed".into())
}

fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&w, rest)) => match k.split_first() {
                Some((kw, krest)) => (w == "*" || w == *kw) && go(rest, krest),
                None => false,
            },
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

impl State {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Routes a message; returns how many queues took it.
    fn route(&mut self, exchange: &str, key: &str, message: Message) -> Result<usize, BusError> {
        let kind = *self
            .exchanges
            .get(exchange)
            .ok_or_else(|| BusError::Refused(format!("no exchange '{exchange}'")))?;
        let targets: Vec<String> = self
            .bindings
            .iter()
            .filter(|(e, k, _)| {
                e == exchange
                    && match kind {
                        Kind::Direct => k == key,
                        Kind::Topic => topic_matches(k, key),
                        Kind::Fanout => true,
                    }
            })
            .map(|(_, _, q)| q.clone())
            .collect();
        let mut routed = 0;
        for name in targets {
            if let Some(queue) = self.queues.get_mut(&name) {
                queue.ready.push_back(message.clone());
                routed += 1;
            }
        }
        Ok(routed)
    }

    /// Puts a message back on its queue, or dead-letters it past the limit.
    fn give_back(&mut self, queue_name: &str, mut message: Message) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        message.redelivered = true;
        message.returns += 1;
        let over = queue.delivery_limit.is_some_and(|l| message.returns > l);
        if !over {
            queue.ready.push_back(message);
            return;
        }
        if let Some(dlx) = queue.dead_letter_exchange.clone() {
            message.props.set_header(
                "x-first-death-reason",
                crate::codes::Code::DeliveryLimit.as_str(),
            );
            message.props.set_header("x-first-death-queue", queue_name);
            message.redelivered = false;
            message.returns = 0;
            let _ = self.route(&dlx, "", message);
        }
    }

    fn declare_exchange(&mut self, name: &str, kind: Kind) {
        self.exchanges.entry(name.to_owned()).or_insert(kind);
    }

    fn declare_queue(
        &mut self,
        name: &str,
        dead_letter_exchange: Option<&str>,
        delivery_limit: Option<u32>,
    ) {
        let queue = self.queues.entry(name.to_owned()).or_default();
        queue.dead_letter_exchange = dead_letter_exchange.map(str::to_owned);
        queue.delivery_limit = delivery_limit;
    }

    fn bind(&mut self, queue: &str, exchange: &str, key: &str) {
        let binding = (exchange.to_owned(), key.to_owned(), queue.to_owned());
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, BusError> {
        self.inner.state.lock().map_err(|_| poisoned())
    }

    /// Declares the exchanges and fixed queues of the topology; idempotent.
    pub fn declare_topology(&self) -> Result<(), BusError> {
        let mut state = self.lock()?;
        for (name, ty) in crate::amqp::EXCHANGES {
            let kind = match *ty {
                "direct" => Kind::Direct,
                "topic" => Kind::Topic,
                _ => Kind::Fanout,
            };
            state.declare_exchange(name, kind);
        }
        for q in crate::amqp::QUEUES {
            state.declare_queue(q.name, q.dead_letter_exchange, q.delivery_limit);
            state.bind(q.name, q.exchange, q.routing_key);
        }
        Ok(())
    }

    pub fn declare_rack_queue(&self, rack_id: &str, delivery_limit: u32) -> Result<(), BusError> {
        let mut state = self.lock()?;
        let queue = crate::rack_queue(rack_id);
        state.declare_queue(&queue, Some(crate::DEAD_EXCHANGE), Some(delivery_limit));
        state.bind(&queue, crate::JOBS_EXCHANGE, rack_id);
        Ok(())
    }

    /// Publishes; `Ok(false)` when `mandatory` and no queue took it.
    pub fn publish(
        &self,
        exchange: &str,
        key: &str,
        payload: &[u8],
        props: &Props,
        mandatory: bool,
    ) -> Result<bool, BusError> {
        let routed = self.lock()?.route(
            exchange,
            key,
            Message {
                data: payload.into(),
                props: props.clone(),
                redelivered: false,
                returns: 0,
            },
        )?;
        if routed > 0 {
            self.inner.changed.notify_waiters();
        }
        Ok(routed > 0 || !mandatory)
    }

    /// Messages ready (not delivered) in a queue, if it exists.
    pub fn queue_depth(&self, queue: &str) -> Result<Option<usize>, BusError> {
        Ok(self.lock()?.queues.get(queue).map(|q| q.ready.len()))
    }

    /// Messages in a queue not yet settled: ready plus delivered-unacked.
    pub fn outstanding(&self, queue: &str) -> Result<Option<usize>, BusError> {
        Ok(self
            .lock()?
            .queues
            .get(queue)
            .map(|q| q.ready.len() + q.unacked.len()))
    }

    /// Consumes a queue with manual acks and at most `prefetch` unsettled.
    pub fn consume(&self, queue: &str, prefetch: u16) -> Result<MemoryConsumer, BusError> {
        let mut state = self.lock()?;
        if !state.queues.contains_key(queue) {
            return Err(BusError::Refused(format!("no queue '{queue}'")));
        }
        let id = state.next();
        Ok(MemoryConsumer {
            bus: self.clone(),
            queue: queue.to_owned(),
            id,
            prefetch: usize::from(prefetch.max(1)),
            auto_ack: false,
        })
    }

    /// An exclusive, auto-deleted queue bound to a fanout exchange, consumed
    /// without acks: every subscriber gets every broadcast from now on.
    pub fn subscribe(&self, exchange: &str) -> Result<MemoryConsumer, BusError> {
        let mut state = self.lock()?;
        if !state.exchanges.contains_key(exchange) {
            return Err(BusError::Refused(format!("no exchange '{exchange}'")));
        }
        let id = state.next();
        let queue = format!("amq.gen-{id}");
        state.declare_queue(&queue, None, None);
        if let Some(q) = state.queues.get_mut(&queue) {
            q.auto_delete = true;
        }
        state.bind(&queue, exchange, "");
        Ok(MemoryConsumer {
            bus: self.clone(),
            queue,
            id,
            prefetch: usize::MAX,
            auto_ack: true,
        })
    }

    fn settle(&self, queue: &str, tag: u64, requeue: bool) -> Result<(), BusError> {
        let mut state = self.lock()?;
        let Some(q) = state.queues.get_mut(queue) else {
            return Err(BusError::Closed(format!("queue '{queue}' is gone")));
        };
        let Some((consumer, message)) = q.unacked.remove(&tag) else {
            return Err(BusError::Closed(format!(
                "delivery {tag} is not outstanding (its consumer went away)"
            )));
        };
        if let Some(n) = q.held.get_mut(&consumer) {
            *n = n.saturating_sub(1);
        }
        if requeue {
            state.give_back(queue, message);
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(())
    }

    fn settle_through(&self, queue: &str, consumer: u64, tag: u64) -> Result<(), BusError> {
        let mut state = self.lock()?;
        let Some(q) = state.queues.get_mut(queue) else {
            return Err(BusError::Closed(format!("queue '{queue}' is gone")));
        };
        let tags: Vec<u64> = q
            .unacked
            .iter()
            .filter(|(t, (c, _))| **t <= tag && *c == consumer)
            .map(|(t, _)| *t)
            .collect();
        for t in &tags {
            q.unacked.remove(t);
        }
        if let Some(n) = q.held.get_mut(&consumer) {
            *n = n.saturating_sub(tags.len());
        }
        drop(state);
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

/// One consumer of one queue. Dropping it hands every message it has not
/// settled back to the queue, flagged as redelivered.
#[derive(Debug)]
pub struct MemoryConsumer {
    bus: MemoryBus,
    queue: String,
    id: u64,
    prefetch: usize,
    auto_ack: bool,
}

/// A message handed to a memory consumer.
#[derive(Debug)]
pub struct MemoryDelivery {
    pub(super) bus: MemoryBus,
    pub(super) queue: String,
    pub(super) consumer: u64,
    pub(super) tag: u64,
    pub(super) data: Vec<u8>,
    pub(super) props: Props,
    pub(super) redelivered: bool,
    pub(super) auto_ack: bool,
}

impl MemoryDelivery {
    pub(super) fn ack(&self) -> Result<(), BusError> {
        if self.auto_ack {
            return Ok(());
        }
        self.bus.settle(&self.queue, self.tag, false)
    }

    pub(super) fn nack(&self, requeue: bool) -> Result<(), BusError> {
        if self.auto_ack {
            return Ok(());
        }
        self.bus.settle(&self.queue, self.tag, requeue)
    }

    pub(super) fn ack_through(&self) -> Result<(), BusError> {
        if self.auto_ack {
            return Ok(());
        }
        self.bus
            .settle_through(&self.queue, self.consumer, self.tag)
    }
}

impl MemoryConsumer {
    fn try_take(&self) -> Result<Option<MemoryDelivery>, BusError> {
        let mut state = self.bus.lock()?;
        let tag = state.next();
        let Some(q) = state.queues.get_mut(&self.queue) else {
            return Err(BusError::Closed(format!("queue '{}' is gone", self.queue)));
        };
        let held = q.held.get(&self.id).copied().unwrap_or(0);
        if held >= self.prefetch {
            return Ok(None);
        }
        let Some(message) = q.ready.pop_front() else {
            return Ok(None);
        };
        let delivery = MemoryDelivery {
            bus: self.bus.clone(),
            queue: self.queue.clone(),
            consumer: self.id,
            tag,
            data: message.data.to_vec(),
            props: message.props.clone(),
            redelivered: message.redelivered,
            auto_ack: self.auto_ack,
        };
        if !self.auto_ack {
            q.unacked.insert(tag, (self.id, message));
            *q.held.entry(self.id).or_default() += 1;
        }
        Ok(Some(delivery))
    }

    /// The next message, waiting for one; an error when the bus failed.
    pub async fn next(&mut self) -> Result<MemoryDelivery, BusError> {
        loop {
            let notified = self.bus.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self.try_take()? {
                return Ok(d);
            }
            notified.await;
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let Ok(mut state) = self.bus.inner.state.lock() else {
            return;
        };
        let Some(q) = state.queues.get_mut(&self.queue) else {
            return;
        };
        if q.auto_delete {
            state.queues.remove(&self.queue);
            state.bindings.retain(|(_, _, q)| *q != self.queue);
            return;
        }
        let mut mine: Vec<(u64, Message)> = q
            .unacked
            .iter()
            .filter(|(_, (c, _))| *c == self.id)
            .map(|(t, (_, m))| (*t, m.clone()))
            .collect();
        for (t, _) in &mine {
            q.unacked.remove(t);
        }
        q.held.remove(&self.id);
        // Back in delivery order, ahead of what was never delivered.
        mine.sort_by_key(|(t, _)| *t);
        for (_, message) in mine {
            state.give_back(&self.queue, message);
        }
        drop(state);
        self.bus.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> MemoryBus {
        let bus = MemoryBus::new();
        bus.declare_topology().unwrap();
        bus.declare_rack_queue("r1", 2).unwrap();
        bus
    }

    fn props(id: &str) -> Props {
        Props::new(id, "test")
    }

    #[test]
    fn topic_patterns_match_like_rabbitmq() {
        assert!(topic_matches("#", "slot.inserted"));
        assert!(topic_matches("#", "heartbeat"));
        assert!(topic_matches("slot.*", "slot.removed"));
        assert!(!topic_matches("slot.*", "heartbeat"));
        assert!(!topic_matches("slot.*", "slot.a.b"));
        assert!(topic_matches("slot.#", "slot.a.b"));
    }

    #[tokio::test]
    async fn direct_routing_and_mandatory_unroutable() {
        let bus = bus();
        assert!(
            bus.publish(crate::JOBS_EXCHANGE, "r1", b"a", &props("1"), true)
                .unwrap()
        );
        assert!(
            !bus.publish(crate::JOBS_EXCHANGE, "nope", b"b", &props("2"), true)
                .unwrap()
        );
        assert!(
            bus.publish(crate::JOBS_EXCHANGE, "nope", b"b", &props("2"), false)
                .unwrap()
        );
        assert_eq!(bus.queue_depth(&crate::rack_queue("r1")).unwrap(), Some(1));
        assert!(
            bus.publish("no-such", "", b"x", &props("3"), false)
                .is_err()
        );
    }

    #[tokio::test]
    async fn prefetch_bounds_unacked_and_ack_frees_it() {
        let bus = bus();
        for i in 0..3 {
            bus.publish(crate::JOBS_EXCHANGE, "r1", &[i], &props("m"), true)
                .unwrap();
        }
        let mut c = bus.consume(&crate::rack_queue("r1"), 2).unwrap();
        let a = c.next().await.unwrap();
        let _b = c.next().await.unwrap();
        assert!(c.try_take().unwrap().is_none(), "prefetch of 2 is full");
        a.ack().unwrap();
        let third = c.next().await.unwrap();
        assert_eq!(third.data, vec![2]);
        assert!(a.ack().is_err(), "a settled delivery cannot be acked twice");
    }

    #[tokio::test]
    async fn a_lost_consumer_hands_its_messages_back_flagged() {
        let bus = bus();
        bus.publish(crate::JOBS_EXCHANGE, "r1", b"job", &props("m"), true)
            .unwrap();
        let mut c = bus.consume(&crate::rack_queue("r1"), 4).unwrap();
        let d = c.next().await.unwrap();
        assert!(!d.redelivered);
        drop(c);
        assert!(d.ack().is_err(), "the delivery died with its consumer");
        let mut c2 = bus.consume(&crate::rack_queue("r1"), 4).unwrap();
        let again = c2.next().await.unwrap();
        assert_eq!(again.data, b"job");
        assert!(again.redelivered);
    }

    #[tokio::test]
    async fn past_the_delivery_limit_a_message_is_dead_lettered() {
        let bus = bus();
        bus.publish(crate::JOBS_EXCHANGE, "r1", b"job", &props("m1"), true)
            .unwrap();
        let mut c = bus.consume(&crate::rack_queue("r1"), 4).unwrap();
        for _ in 0..3 {
            c.next().await.unwrap().nack(true).unwrap();
        }
        assert_eq!(bus.queue_depth(&crate::rack_queue("r1")).unwrap(), Some(0));
        let mut dead = bus.consume(crate::DEAD_QUEUE, 1).unwrap();
        let d = dead.next().await.unwrap();
        assert_eq!(d.data, b"job");
        assert_eq!(
            d.props.header("x-first-death-reason"),
            Some("delivery_limit")
        );
        assert_eq!(
            d.props.header("x-first-death-queue"),
            Some(crate::rack_queue("r1").as_str())
        );
        assert_eq!(d.props.message_id.as_deref(), Some("m1"));
    }

    #[tokio::test]
    async fn ack_through_settles_everything_up_to_a_delivery() {
        let bus = bus();
        for i in 0..4 {
            bus.publish(
                crate::RESULTS_EXCHANGE,
                crate::RESULTS_QUEUE,
                &[i],
                &props("r"),
                true,
            )
            .unwrap();
        }
        let mut c = bus.consume(crate::RESULTS_QUEUE, 10).unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(c.next().await.unwrap());
        }
        got[2].ack_through().unwrap();
        drop(c);
        // Only the unsettled fourth message is left.
        let mut c2 = bus.consume(crate::RESULTS_QUEUE, 10).unwrap();
        assert_eq!(c2.next().await.unwrap().data, vec![3]);
        assert_eq!(bus.queue_depth(crate::RESULTS_QUEUE).unwrap(), Some(0));
    }

    #[tokio::test]
    async fn fanout_subscribers_each_get_broadcasts_and_vanish_when_dropped() {
        let bus = bus();
        let mut a = bus.subscribe(crate::CONTROL_EXCHANGE).unwrap();
        let mut b = bus.subscribe(crate::CONTROL_EXCHANGE).unwrap();
        bus.publish(crate::CONTROL_EXCHANGE, "", b"cancel", &props("c"), false)
            .unwrap();
        assert_eq!(a.next().await.unwrap().data, b"cancel");
        assert_eq!(b.next().await.unwrap().data, b"cancel");
        drop(a);
        drop(b);
        // No subscriber: a broadcast is not an error, just unrouted.
        assert!(
            !bus.publish(crate::CONTROL_EXCHANGE, "", b"x", &props("c"), true)
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_publish() {
        let bus = bus();
        let mut c = bus.consume(crate::SLOT_EVENTS_QUEUE, 1).unwrap();
        let waiter = tokio::spawn(async move { c.next().await.map(|d| d.data) });
        tokio::task::yield_now().await;
        bus.publish(
            crate::EVENTS_EXCHANGE,
            "slot.inserted",
            b"e",
            &props("e"),
            true,
        )
        .unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), b"e");
    }
}
