//! Plain data types shared by the areas: an event and its fields, a listener (its source and
//! its delivery), what a data listener asks for, and a session. No SQL runs here.
pub mod data;
pub mod event;
pub mod listener;
pub mod session;
