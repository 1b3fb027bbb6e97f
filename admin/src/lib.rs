//! The Headwater admin service: the provisioning REST API, the store, and the
//! worker that carries out operations. See DESIGN.md §2 (`admin/`).

pub mod api;
pub mod bus;
pub mod clock;
pub mod domain;
pub mod every;
pub mod health;
pub mod heartbeats;
pub mod keys;
pub mod probe_content;
pub mod reconciler;
pub mod retention;
pub mod routing;
pub mod server;
pub mod store;
pub mod warm;
pub mod worker;
