//! mercure: the pure, sans-IO core of a Mercure hub (IETF
//! draft-dunglas-mercure): request and token parsing, topic matching and
//! authorization decisions, as functions over bytes and strings. No sockets,
//! no clocks (callers pass `now`), no global state.
//!
//! | module        | role |
//! |---------------|------|
//! | [`form`]      | `application/x-www-form-urlencoded` decoding (strict UTF-8) and the forbidden-character rule. |
//! | [`matcher`]   | topic matchers: `exact`, `urlpattern` and the `*` wildcard. |
//! | [`subscribe`] | the subscription query (or body): matchers and `last_event_id`. |
//! | [`update`]    | the publish body: topics, data, privacy, id, type, retry. |
//! | [`legacy`]    | the pre-standardization (0.x) protocol, for `--mercure-compat 0`. |
//! | [`subscriptions`] | active subscriptions: event topics and documents, the subscription API's paths and collections. |
//! | [`token`]     | access tokens: presentation, JWT validation, authorization details, grants. |
//!
//! The server wires these into its endpoints; nothing here answers HTTP, but
//! every error says which status (400, 401, 413) the spec asks for.

pub mod form;
pub mod legacy;
pub mod matcher;
pub mod subscribe;
pub mod subscriptions;
pub mod token;
pub mod update;
