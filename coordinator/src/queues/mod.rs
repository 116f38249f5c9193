//! Event queues, the coordinator's side: claiming running queues nobody drains
//! ([`claims`]) and draining each claimed queue ([`drainer`]).
pub mod claims;
pub mod drainer;
