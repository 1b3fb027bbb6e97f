//! The Headwater admin service: the provisioning REST API, the store, and the
//! worker that carries out operations. See DESIGN.md §2 (`admin/`).

pub mod api;
pub mod bus;
pub mod clock;
pub mod control;
pub mod domain;
pub mod keys;
pub mod node_ca;
pub mod probe_content;
pub mod rules;
pub mod sealed;
pub mod server;
pub mod states;
pub mod store;
pub mod usage_rollup;
