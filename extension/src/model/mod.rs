//! Plain data types shared by the areas: an event and its fields, a listener (its source and
//! its delivery), what a data listener asks for, a session, and where the jobs area meets
//! the areas that make jobs (`runner`), and where jobs meet the resource locks (`gate`). No
//! SQL runs here.
pub mod data;
pub mod event;
pub mod gate;
pub mod listener;
pub mod runner;
pub mod session;
