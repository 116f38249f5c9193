//! Event queues, the coordinator's side: claiming running queues nobody drains
//! ([`claims`]) and draining them, many queues per connection ([`lane`]).
pub mod claims;
pub mod lane;
