//! Report output: each coordinator runs one output worker (`output`) with a connection of
//! its own, which claims pending output records and sends them through their channel
//! (`channels`): a file in the spool directory, a print job, a mail.
pub mod channels;
pub mod output;
