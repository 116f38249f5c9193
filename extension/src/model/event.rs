//! An event, as producers store it and as handlers receive it (the row type `herald.event`).
use pgrx::prelude::*;

/// One event on its way to storage or a handler, borrowing its texts (producers build one
/// per event and reuse it for every listener without copying).
#[derive(Clone, Copy)]
pub struct EventRow<'a> {
    pub id: i64,
    pub queue: Option<&'a str>,
    pub r#type: &'a str,
    pub action: &'a str,
    pub source: Option<&'a str>,
    /// A `jsonb` datum, passed through without conversion.
    pub details: pg_sys::Datum,
    pub created_at: pg_sys::TimestampTz,
    pub listener: i64,
}

/// One event read back from storage (owning its texts).
pub struct EventValue {
    pub id: i64,
    pub queue: Option<String>,
    pub r#type: String,
    pub action: String,
    pub source: Option<String>,
    /// A `jsonb` datum, passed through without conversion.
    pub details: pg_sys::Datum,
    pub created_at: pg_sys::TimestampTz,
    pub listener: i64,
}

impl<'a> EventRow<'a> {
    /// The same event as delivered to one listener (through `queue`, or directly if None).
    pub fn for_listener(&self, queue: Option<&'a str>, listener: i64) -> EventRow<'a> {
        EventRow {
            queue,
            listener,
            ..*self
        }
    }

    /// The value of one field (None: NULL). Texts are made by `text`, so that callers on
    /// the hot path can use an unguarded conversion inside their error boundary. This is the
    /// one place that knows which event field holds what.
    pub fn field(
        &self,
        field: Field,
        text: impl Fn(&str) -> pg_sys::Datum,
    ) -> Option<pg_sys::Datum> {
        match field {
            Field::Id => Some(pg_sys::Datum::from(self.id)),
            Field::Queue => self.queue.map(&text),
            Field::Type => Some(text(self.r#type)),
            Field::Action => Some(text(self.action)),
            Field::Source => self.source.map(&text),
            Field::Details => Some(self.details),
            Field::CreatedAt => Some(pg_sys::Datum::from(self.created_at)),
            Field::Listener => Some(pg_sys::Datum::from(self.listener)),
            Field::None => None,
        }
    }
}

impl EventValue {
    /// The event as a row borrowing from `self`.
    pub fn as_row(&self) -> EventRow<'_> {
        EventRow {
            id: self.id,
            queue: self.queue.as_deref(),
            r#type: &self.r#type,
            action: &self.action,
            source: self.source.as_deref(),
            details: self.details,
            created_at: self.created_at,
            listener: self.listener,
        }
    }
}

/// Which event field a column of Herald's event tables (or of the `herald.event` row type)
/// holds, matched by name so the code survives columns added by later versions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Field {
    Id,
    Queue,
    Type,
    Action,
    Source,
    Details,
    CreatedAt,
    Listener,
    /// A dropped column, or one this version does not know (left NULL).
    None,
}

impl Field {
    /// The field a column holds.
    pub fn of(att: &pg_sys::FormData_pg_attribute) -> Field {
        if att.attisdropped {
            return Field::None;
        }
        // SAFETY: `attname` is a NUL-terminated NameData.
        match unsafe { std::ffi::CStr::from_ptr(att.attname.data.as_ptr()) }.to_bytes() {
            b"id" => Field::Id,
            b"queue" => Field::Queue,
            b"type" => Field::Type,
            b"action" => Field::Action,
            b"source" => Field::Source,
            b"details" => Field::Details,
            b"created_at" => Field::CreatedAt,
            b"listener" => Field::Listener,
            _ => Field::None,
        }
    }

    /// The SQL type of the field's values.
    pub fn type_oid(self) -> pg_sys::Oid {
        match self {
            Field::Id | Field::Listener => pg_sys::INT8OID,
            Field::Queue | Field::Type | Field::Action | Field::Source => pg_sys::TEXTOID,
            Field::Details => pg_sys::JSONBOID,
            Field::CreatedAt => pg_sys::TIMESTAMPTZOID,
            Field::None => pg_sys::UNKNOWNOID,
        }
    }
}
