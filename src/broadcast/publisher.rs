//! Publishing from inside the process: a [`Publisher`] is the embedding
//! program's (and `--tick`'s) way in, the same path as `POST /send-event`
//! without HTTP. It lives in the broadcast core, not in the server, because
//! it needs only the [`Hub`] and the cluster [`Bus`]: the event loops never
//! see it, they only find its events in their inboxes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::broadcast::bus::Bus;
use crate::broadcast::event::Publish;
use crate::broadcast::hub::{Busy, Hub, Origin};

/// How long a [`Publisher`] on a cluster node waits for Redis to take an
/// event before it reports the bus unavailable.
pub const BUS_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes into a running server from any thread. Cheap to clone.
///
/// An event goes through the [`Hub`] on the caller's thread, exactly like
/// one published with `POST /send-event`: numbered, framed once, and put in
/// every loop's inbox (each loop is woken through its [`mio::Waker`]) before
/// `publish` returns. On a cluster node it goes to Redis, and `publish`
/// returns once Redis took it.
#[derive(Clone)]
pub struct Publisher {
    hub: Arc<Hub>,
    bus: Option<Arc<Bus>>,
    stop: Arc<AtomicBool>,
}

/// Why a [`Publisher`] could not publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The event is invalid (topic or event name); says what was wrong.
    Invalid(String),
    /// The server has stopped.
    Stopped,
    /// The cluster bus could not take it (Redis unreachable); says why.
    Unavailable(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Invalid(why) => write!(f, "invalid event: {why}"),
            PublishError::Stopped => f.write_str("the server has stopped"),
            PublishError::Unavailable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PublishError {}

impl Publisher {
    /// Publishes `message` on the default topic, as `POST /send-event` does.
    pub fn send(&self, message: impl Into<String>) -> Result<(), PublishError> {
        self.publish(Publish::message(message))
    }

    /// Publishes an event with topics and an event name. Waits while a loop
    /// is more than [`crate::broadcast::hub::MAX_INBOX_BYTES`] behind (back-pressure
    /// rather than unbounded memory); on a cluster node, waits for Redis.
    pub fn publish(&self, publish: Publish) -> Result<(), PublishError> {
        publish.validate().map_err(PublishError::Invalid)?;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(PublishError::Stopped);
            }
            if let Some(bus) = &self.bus {
                let (answer, answered) = crossbeam_channel::bounded(1);
                bus.submit(publish, Box::new(move |result| drop(answer.send(result))));
                return match answered.recv_timeout(BUS_ANSWER_TIMEOUT) {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(PublishError::Unavailable(e.to_string())),
                    Err(_) => Err(PublishError::Unavailable("redis did not answer in time".to_owned())),
                };
            }
            match self.hub.publish(&publish, Origin::Thread) {
                Ok(_) => return Ok(()),
                Err(Busy) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

impl Publisher {
    /// A publisher into `hub` (through `bus` on a cluster node) that fails
    /// with [`PublishError::Stopped`] once `stop` is set.
    pub fn new(hub: Arc<Hub>, bus: Option<Arc<Bus>>, stop: Arc<AtomicBool>) -> Publisher {
        Publisher { hub, bus, stop }
    }
}
