//! The broadcast core: how a published event reaches every subscriber, on
//! every event loop and every cluster node, once and in one order. Nothing
//! here knows HTTP or an API's formats; the application ([`crate::app`])
//! turns requests into [`event::Publish`]es and subscriptions, and the
//! server lends the broker its connections.
//!
//! | module        | role |
//! |---------------|------|
//! | [`event`]     | what an event is: the publish, its id, the framed event shared by all |
//! | [`hub`]       | what the event loops share: the one order of events (ids), the inboxes, counts and caps |
//! | [`history`]   | one loop's recent events, and replay after a `Last-Event-ID` |
//! | [`broker`]    | one loop's topics, subscribers, and the fan-out of frames to them |
//! | [`bus`]       | `--redis`: the cluster bus, one Redis stream shared by all nodes, on its own threads |
//! | [`presence`]  | `--mercure-subscriptions`: who is subscribed, on every loop, with hub-made subscriber ids |
//! | [`roster`]    | `--redis` with `--mercure-subscriptions`: every node's subscriptions in Redis, listed cluster-wide |
//! | [`publisher`] | publishing from the embedding program's threads (and `--tick`) |

pub mod broker;
pub mod bus;
pub mod event;
pub mod history;
pub mod hub;
pub mod presence;
pub mod publisher;
pub mod roster;
